"""Input masking for interpretability."""
