"""Evaluation: kNN classification, retrieval metrics, inference on a trained run, rotation robustness, plots."""
