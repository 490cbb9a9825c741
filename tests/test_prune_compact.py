"""training/prune_compact.py: pruning keeps what matters, exactly."""

from __future__ import annotations

import pytest
import torch

from pyflm import deploy
from pyflm.models.compact import CompactHeatmapNet, InvertedResidual, _round
from training.prune_compact import channel_importance, main, prune_compact, prune_model_file


def _random_net(expand: float = 4.0) -> CompactHeatmapNet:
    """Small net with random BN statistics and affine parameters, eval mode."""
    net = CompactHeatmapNet(num_landmarks=5, input_size=64, width=0.5, decoder_channels=16, expand=expand)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _kill_weakest(net: CompactHeatmapNet, expand: float) -> None:
    """Zero the depthwise BN of every hidden channel the pruner drops, so that
    those channels pass nothing on (ReLU(0) = 0)."""
    for m in net.modules():
        if isinstance(m, InvertedResidual) and len(m.block) == 3:
            cin = m.block[0][0].in_channels
            n = _round(cin * expand)  # the pruned width, as the net computes it
            hidden = m.block[0][0].out_channels
            dead = torch.randperm(hidden)[: hidden - n]
            bn = m.block[1][1]
            bn.weight.data[dead] = 0.0
            bn.bias.data[dead] = 0.0


def test_pruning_dead_channels_is_exact():
    net = _random_net()
    _kill_weakest(net, 2.0)
    pruned = prune_compact(net, 2.0)
    assert pruned.init_kwargs["expand"] == 2.0
    assert sum(p.numel() for p in pruned.parameters()) < 0.7 * sum(p.numel() for p in net.parameters())
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(pruned.double()(x), net.double()(x), atol=1e-10, rtol=0)


def test_pruning_to_the_same_width_is_the_identity():
    net = _random_net()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(prune_compact(net, 4.0)(x), net(x), atol=0, rtol=0)


def test_importance_ranks_by_what_a_channel_passes_on():
    block = next(m for m in _random_net().modules() if isinstance(m, InvertedResidual) and len(m.block) == 3)
    block.block[1][1].weight.data[3] = 0.0
    block.block[2][0].weight.data[:, 5] *= 100
    imp = channel_importance(block)
    assert imp[3] == 0 and imp.argmax() == 5


def test_prune_model_file_round_trip(tmp_path):
    net = _random_net()
    meta = deploy.default_meta("compact", 64, 5, 4)
    src = deploy.save_model_file(tmp_path / "src.pt", "compact", net.init_kwargs, net.state_dict(), meta)
    out = prune_model_file(src, 3.0, tmp_path / "pruned.pt")
    mf = deploy.load_model_file(out)
    assert mf["model_kwargs"]["expand"] == 3.0 and mf["meta"]["pruned_from"]["expand"] == 3.0
    rebuilt = CompactHeatmapNet(**mf["model_kwargs"])
    rebuilt.load_state_dict(mf["state_dict"])  # strict: the shapes fit
    with pytest.raises(ValueError, match="smaller expand"):
        prune_compact(rebuilt, 4.0)
    assert main(["--source", str(tmp_path / "missing.pt"), "--expand", "2", "--out", str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
