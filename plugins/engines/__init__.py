"""Engines: `[distributed] engine = ...` (DDP, DeepSpeed ZeRO)."""
