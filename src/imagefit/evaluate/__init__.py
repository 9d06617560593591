"""Evaluation: metrics from arrays (metrics.py) and evaluating a fitted model (evaluation.py)."""
