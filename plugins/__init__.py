"""Built-in plugins, grouped by the kind of component they register (`data/`, `tokenizers/`,
`models/`, `tasks/`, `strategies/`, `trainers/`, `engines/`, `metrics/`, `reporters/`, `audits/`,
`rewards/`).

Each module imports only the public API (`from runner import ...`), exactly as a third-party plugin
would: it defines components and registers them through `runner.hookimpl` hooks. A test
(tests/test_layout.py) fails when one imports a private `runner.*` module.

`BUILTIN` maps each plugin's name (what `finetune plugins` shows and FINETUNE_DISABLE_PLUGINS takes)
to its module, in load order; third-party plugins (entry-point group `finetune`) load after.
"""

BUILTIN = {
    "data_files": "plugins.data.files",
    "data_hub": "plugins.data.hub",
    "data_inline": "plugins.data.inline",
    "data_synthetic": "plugins.data.synthetic",
    "tokenizer_pretrained": "plugins.tokenizers.pretrained",
    "tokenizer_trained": "plugins.tokenizers.trained",
    "tokenizer_run": "plugins.tokenizers.from_run",
    "model_pretrained": "plugins.models.pretrained",
    "model_config": "plugins.models.config",
    "model_run": "plugins.models.from_run",
    "task_classification": "plugins.tasks.classification",
    "task_causal_lm": "plugins.tasks.causal_lm",
    "task_instruction": "plugins.tasks.instruction",
    "task_token_classification": "plugins.tasks.token_classification",
    "task_seq2seq": "plugins.tasks.seq2seq",
    "task_preference": "plugins.tasks.preference",
    "strategy_full": "plugins.strategies.full",
    "strategy_freeze": "plugins.strategies.freeze",
    "strategy_peft": "plugins.strategies.peft_methods",
    "trainer_hf": "plugins.trainers.hf",
    "trainer_dpo": "plugins.trainers.dpo",
    "trainer_kto": "plugins.trainers.kto",
    "trainer_orpo": "plugins.trainers.orpo",
    "trainer_reward": "plugins.trainers.reward",
    "extractors": "plugins.rewards.extractors",
    "reward_answer_match": "plugins.rewards.answer_match",
    "reward_text_rules": "plugins.rewards.text_rules",
    "reward_model_score": "plugins.rewards.model_score",
    "trainer_grpo": "plugins.trainers.grpo",
    "engine_ddp": "plugins.engines.ddp",
    "engine_deepspeed": "plugins.engines.deepspeed_zero",
    "metrics": "plugins.metrics.standard",
    "reporter_rich": "plugins.reporters.rich_progress",
    "reporter_tensorboard": "plugins.reporters.tensorboard_tracker",
    "reporter_mlflow": "plugins.reporters.mlflow_tracker",
    "audit_leakage": "plugins.audits.leakage",
    "audit_forgetting": "plugins.audits.forgetting",
    "audit_bias": "plugins.audits.bias",
    "audit_verbosity": "plugins.audits.verbosity",
    "audit_win_rate": "plugins.audits.win_rate",
}
