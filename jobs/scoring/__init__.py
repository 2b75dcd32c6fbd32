"""Scoring predictions: point metrics (scikit-learn), the compiled bootstrap, DeLong tests, and the
per-image predictions CSV that every run writes and every report reads.
"""
