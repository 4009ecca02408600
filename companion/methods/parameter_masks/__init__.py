"""Parameter, layer and exit masks: N:M sparsity, layer skipping, early exit."""
