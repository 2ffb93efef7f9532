"""Tasks: the training mixture, the evaluation registry, PromptSource templates, label-safe splits."""
