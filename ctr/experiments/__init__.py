"""Experiments: the synthetic compositional suite (synth*) and the evidence table of issue 12 (evidence*)."""
