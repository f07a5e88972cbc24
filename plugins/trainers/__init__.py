"""Trainers: `[training] type = ...`: the training loop."""
