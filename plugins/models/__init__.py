"""Models: `[model] type = ...` (pretrained weights, or a config built with random init)."""
