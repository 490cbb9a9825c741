"""Training and evaluation of pyflm landmark tasks.

    python -m training.train --config training/configs/<name>.toml [--out runs/<name>]
                             [--resume] [--max-steps N] [--device cpu|cuda]
    torchrun --nproc_per_node=N -m training.train --config ...          (DDP)
    python -m training.evaluate --checkpoint runs/<name>/best.pt [...] \\
        --splits common helen-test lfpw-test [--crops gt|detector] [--out DIR]

Modules: ``config`` (TOML schema, ConfigError naming the key), ``dataset``
(LandmarkDataset: load, ground-truth crop, augmentation, normalisation;
ResumableSampler), ``train`` (loop, checkpoints, resume, DDP, GAN schedule),
``evaluate`` (metrics in image pixels, CED plots, JSON, tables).

Validation split of the shipped configs: a fixed 10% of the 300-W training
photos (``data.val = "holdout"``, grouped by source photo), never the test
splits reported by ``training.evaluate``.
"""
