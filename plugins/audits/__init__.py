"""Audits: `[[audits]] type = ...` (leakage, forgetting, bias)."""
