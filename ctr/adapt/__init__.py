"""Adaptation to unseen tasks: Code Ensemble (zero-label), Bitwise Search (few-shot), baselines, audit."""
