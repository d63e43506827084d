"""The LM sweep (`kind: lm`): scales x mixtures x seeds of GPT-2-family cells (config, study, report)."""
