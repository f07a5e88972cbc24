"""Judging a trained model: metrics against baselines, and audits.

Owns the evaluator (`evaluator`: metrics on each split, beside the base model and the majority
class), scoring helpers (`scoring`), bootstrap intervals (`intervals`), the training-curve
diagnosis (`diagnosis`), running audits (`audits`) and data statistics (`data_stats`).
May import the public API, `toolkit` (collators, losses) and `storage`; it writes no files.
"""
