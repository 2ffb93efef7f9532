"""Experiments: the synthetic compositional suite."""
