"""Peer benchmarks: pyflm against dlib and OpenCV LBF on the 300-W test sets (see compare.py)."""
