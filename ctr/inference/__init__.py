"""Inference: scoring, generation with codes, the evaluation harness."""
