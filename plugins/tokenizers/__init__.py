"""Tokenizers: `[tokenizer] type = ...` (a pretrained one, or one trained on the recipe's data)."""
