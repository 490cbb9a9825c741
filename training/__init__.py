"""Training and evaluation of pyflm landmark tasks (run as ``python -m training.train``
and ``python -m training.evaluate``; see those modules)."""
