"""Metrics: `[[evaluation.metrics]]`, evaluate modules shipped in `modules/`."""
