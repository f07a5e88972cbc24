"""Hyperparameter sweeps: `finetune sweep` (Optuna studies over any recipe key).

Owns the study (storage, sampler, pruner), the trial loop workers share, each trial's recipe and run,
and the sweep's report. May import every wing below the CLI: a trial is an ordinary run (pipeline).
"""
