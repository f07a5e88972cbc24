"""The run directory on disk: its layout, atomic writes, status and records (`rundir`), and
checkpoints that are either complete or ignored (`checkpoints`).

The pipeline writes it; reports, `finetune resume` and the other commands read it. May import the
public API modules only.
"""
