"""Running on several processes or machines.

Owns the launcher (`launch`: torchrun and the multi-node start), the process-group helpers every
rank uses (`process_group`: joining one run directory, outcomes, exit codes), resuming on another
number of processes (`resize`) and the memory estimate `finetune plan` prints (`memory`). What an
engine does (DeepSpeed's config, its sharded checkpoints) is the engine plugin's: this wing only
calls the `Engine` methods. May import the public API, `recipe` and `storage` (the run directory
and checkpoints).
"""
