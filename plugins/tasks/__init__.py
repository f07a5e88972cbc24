"""Tasks: `[task] type = ...`: how rows become model inputs and labels, and how predictions are scored."""
