"""Experiments: the synthetic compositional suite (synth*) and the evidence table, do the codes matter? (evidence*)."""
