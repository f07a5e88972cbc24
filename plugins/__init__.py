"""Built-in plugins. Each module uses only the public hook API, as a third-party plugin would:
it defines components and registers them through `runner.hookimpl` hooks.

`BUILTIN` lists them in load order; third-party plugins (entry-point group `finetune`) load after.
"""

BUILTIN = [
    "plugins.data_files",
    "plugins.data_hub",
    "plugins.data_inline",
    "plugins.data_synthetic",
    "plugins.tokenizer_pretrained",
    "plugins.tokenizer_trained",
    "plugins.model_pretrained",
    "plugins.model_config",
    "plugins.task_classification",
    "plugins.task_causal_lm",
    "plugins.task_instruction",
    "plugins.task_token_classification",
    "plugins.task_seq2seq",
    "plugins.strategy_full",
    "plugins.strategy_freeze",
    "plugins.strategy_peft",
    "plugins.trainer_hf",
    "plugins.engine_ddp",
    "plugins.engine_deepspeed",
    "plugins.metrics",
    "plugins.reporter_rich",
    "plugins.audit_leakage",
    "plugins.audit_forgetting",
    "plugins.audit_bias",
]
