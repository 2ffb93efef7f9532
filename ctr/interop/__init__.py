"""Interoperability: a code as a PEFT adapter or a plain tensor, and a `ctr` model for lm-evaluation-harness."""
