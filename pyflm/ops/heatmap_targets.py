"""Placeholder: implemented in its own change."""

def heatmap_targets(*args, **kwargs):
    raise NotImplementedError("heatmap_targets")


def heatmap_targets_reference(*args, **kwargs):
    raise NotImplementedError("heatmap_targets_reference")


