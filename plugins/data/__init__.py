"""Data sources: `type = ...` under `[[data.sources]]` (local files, the Hub, inline rows, synthetic data)."""
