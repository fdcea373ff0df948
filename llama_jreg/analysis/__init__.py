"""Analysis of trained models: the jump metric, logit lens, FFN concepts, plots."""
