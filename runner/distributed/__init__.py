"""Running on several processes or machines.

Owns the launcher (`launch`: torchrun and the multi-node start), the process-group helpers every
rank uses (`process_group`: joining one run directory, outcomes, exit codes) and the memory
estimate `finetune plan` prints (`memory`). May import the public API, `recipe` and `storage` (the
run directory and checkpoints).
"""
