"""The model and what a code is: backbone, quantizer, CTRModel, prompt format, codes, loading."""
