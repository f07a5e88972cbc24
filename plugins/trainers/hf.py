"""Trainer `hf`: the Hugging Face `Trainer`, with the usual knobs named plainly.

What it adds to the plain Trainer:
- a NaN or infinite loss stops training before the optimizer step that would spread it;
- every checkpoint gets a manifest written last (runner.storage.checkpoints), and rotation deletes only
  complete checkpoints, after the new one is complete;
- Ctrl-C or SIGTERM saves a checkpoint at the end of the current step and stops;
- progress goes to the run's reporters and metrics.jsonl through the core's events.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import ClassVar

from plugins.trainers import _fused_loss
from plugins.trainers._hf_options import BNB_OPTIMIZERS, HFOptions, HFTrainerOptions
from plugins.trainers._hf_trainer import (
    LOGGED,
    NonFiniteLoss,
    bridge_events,
    compile_unavailable,
    evaluation_only,
    make_trainer_class,
    recorded_best,
)
from runner import (
    MAX_STEPS,
    FinetuneError,
    Trainer,
    TrainingDiverged,
    TrainOutcome,
    hookimpl,
    latest_checkpoint,
    world_size,
)


class HF(Trainer):
    """The Hugging Face Trainer: AdamW, schedules, mixed precision, early stopping, best model."""

    name = "hf"
    Options = HFOptions
    # The engine's settings are keyword arguments of transformers' TrainingArguments (deepspeed=...).
    framework = "transformers"
    # Whether it trains on preference pairs (a task that `produces` "preferences"), and no other task.
    preference_pairs: ClassVar[bool] = False
    # Validation metrics the trainer reports itself, besides loss and the recipe's metrics (best_metric).
    trainer_metrics: ClassVar[tuple[str, ...]] = ()
    logged: ClassVar[tuple[str, ...]] = LOGGED  # the keys of a training log that reach the events
    aliases = {
        "lr": "learning_rate",
        "num_train_epochs": "epochs",
        "num_epochs": "epochs",
        "per_device_train_batch_size": "batch_size",
        "micro_batch_size": "batch_size",
        "per_device_eval_batch_size": "eval_batch_size",
        "lr_scheduler_type": "scheduler",
        "lr_scheduler": "scheduler",
        "optim": "optimizer",
        "fp16": "mixed_precision",
        "bf16": "mixed_precision",
        "eval_steps": "eval_every",
        "save_steps": "save_every",
        "logging_steps": "log_every",
        "save_total_limit": "keep_checkpoints",
        "load_best_model_at_end": "keep_best",
        "metric_for_best_model": "best_metric",
    }

    @classmethod
    def check(cls, options, recipe):
        loss, head = getattr(options, "loss", None), getattr(recipe.task.cls, "head", "")
        if loss in ("chunked", "liger") and head not in ("causal_lm", ""):
            yield (("loss",), f"'{loss}' is a causal language model's loss, and task.type = '{recipe.task.name}' "
                              f"trains a {head} head: use 'auto' or 'plain'")  # fmt: skip
        if loss == "liger" and not _fused_loss.liger_installed():
            yield (
                ("loss",),
                "'liger' needs the liger-kernel package (Triton, a CUDA GPU), which is not installed: "
                "pip install liger-kernel, or use 'chunked'",
            )
        if loss == "chunked" and recipe.distributed.create().sharding().zero_stage == 3:
            why = "each process would gather the output layer a different number of times, and wait for ever"
            yield (("loss",), f"'chunked' cannot run under ZeRO-3: {why}; use 'auto' or 'plain'")
        if options.optimizer in BNB_OPTIMIZERS and importlib.util.find_spec("bitsandbytes") is None:
            yield (
                ("optimizer",),
                f"'{options.optimizer}' needs bitsandbytes, which is not installed; "
                "install the extra: pip install 'finetune-runner[quantization]'",
            )
        task = recipe.task
        if (task.cls.produces == "preferences") != cls.preference_pairs:
            needs = "preference pairs" if cls.preference_pairs else "rows with labels, not preference pairs"
            yield (
                ("type",),
                f"training.type = '{cls.name}' trains on {needs}, and task.type = '{task.name}' produces "
                f"{task.cls.produces or 'something else'}: "
                + ("use a task that produces preferences" if cls.preference_pairs else "use a preference trainer"),
            )
        # text metrics score generated answers after training, never a validation during it
        keys = ["loss", *cls.trainer_metrics] + [
            spec.create().key() for spec in recipe.metrics if spec.cls.consumes != {"text"}
        ]
        if options.best_metric not in keys:
            yield (
                ("best_metric",),
                f"no validation metric '{options.best_metric}'; choose one of: {', '.join(keys)}",
            )

    # -- arguments -----------------------------------------------------------------------------------
    def _checkpointing(self, model) -> bool:
        """As set; by default on for a quantized base, where activations dominate memory (QLoRA)."""
        value = self.options.gradient_checkpointing
        return bool(getattr(model, "is_quantized", False)) if value is None else value

    def _precision(self) -> dict:
        import torch

        mode = self.options.mixed_precision
        cuda = torch.cuda.is_available()
        if mode == "auto":
            mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
        if mode == "fp16" and not cuda:
            raise FinetuneError("training.mixed_precision = 'fp16' needs a CUDA GPU", hint="use 'bf16' or 'no' on CPU")
        return {"bf16": mode == "bf16", "fp16": mode == "fp16", "use_cpu": not cuda}

    def _arguments(self, job, has_eval: bool):
        from transformers import TrainingArguments

        return TrainingArguments(**self._argument_values(job, has_eval))

    def _argument_values(self, job, has_eval: bool) -> dict:
        """The keyword arguments of `TrainingArguments` (a trainer on a subclass of it adds its own)."""
        o = self.options

        def strategy(every):
            return ("epoch", None) if every == "epoch" else ("steps", every)

        eval_strategy, eval_steps = strategy(o.eval_every) if has_eval else ("no", None)
        save_strategy, save_steps = strategy(o.save_every if o.save_every is not None else o.eval_every)
        best = "eval_loss" if o.best_metric == "loss" else f"eval_{o.best_metric}"
        greater = False if o.best_metric == "loss" else job.greater_is_better.get(o.best_metric, True)
        return dict(
            output_dir=str(job.checkpoint_dir),
            per_device_train_batch_size=o.batch_size,
            per_device_eval_batch_size=o.eval_batch_size or 2 * o.batch_size,
            gradient_accumulation_steps=o.gradient_accumulation_steps,
            learning_rate=o.learning_rate,
            weight_decay=o.weight_decay,
            num_train_epochs=o.epochs,
            max_steps=o.max_steps or -1,
            lr_scheduler_type=o.scheduler,
            warmup_steps=o.warmup_ratio if o.warmup_ratio else o.warmup_steps,
            optim=BNB_OPTIMIZERS.get(o.optimizer, o.optimizer),
            max_grad_norm=o.max_grad_norm,
            eval_strategy=eval_strategy,
            eval_on_start=has_eval and o.eval_on_start,
            eval_steps=eval_steps,
            save_strategy=save_strategy,
            save_steps=save_steps,
            save_total_limit=None,  # rotation happens after a checkpoint is marked complete
            logging_strategy="steps",
            logging_steps=o.log_every,
            logging_first_step=True,
            logging_nan_inf_filter=False,
            load_best_model_at_end=has_eval and o.keep_best,
            metric_for_best_model=best if has_eval else None,
            greater_is_better=greater,
            train_sampling_strategy="group_by_length" if o.group_by_length else "random",
            length_column_name="length",
            remove_unused_columns=False,  # the collator keeps only model inputs
            label_names=["labels"],
            report_to="none",
            disable_tqdm=True,
            # the other ranks keep the run's logging level; transformers' default (warnings) repeated
            log_level_replica="passive",  # its notes on each (under ZeRO-3, one a checkpoint)
            seed=job.seed,
            data_seed=job.seed,
            full_determinism=job.deterministic,
            activation_checkpointing=self._checkpointing(job.model),
            dataloader_num_workers=o.dataloader_workers,
            torch_compile=o.compile,
            **self._precision(),
            **(job.engine.trainer_settings(self.framework, job.resume_from) if job.engine else {}),
        )

    def _trainer(self, job, has_eval: bool, callbacks=()):
        trainer = self._make_trainer(job, has_eval, list(callbacks))
        trainer.keep_checkpoints = self.options.keep_checkpoints
        trainer.run_engine = job.engine  # asked again for the best checkpoint, at the end
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # the run's reporters show progress instead
        return trainer

    def _make_trainer(self, job, has_eval: bool, callbacks: list):
        """The transformers `Trainer` (subclassed by `make_trainer_class`) for `job`."""
        return make_trainer_class()(
            model=job.model,
            args=self._arguments(job, has_eval),
            train_dataset=job.train,
            eval_dataset=job.evaluation,
            data_collator=job.collator,
            processing_class=job.tokenizer,
            compute_metrics=job.compute_metrics,
            preprocess_logits_for_metrics=job.task.preprocess_logits,
            callbacks=callbacks,
        )

    # -- the component's work -----------------------------------------------------------------------
    def fit(self, job) -> TrainOutcome:
        from transformers import EarlyStoppingCallback

        has_eval = job.evaluation is not None and len(job.evaluation) > 0

        if job.train is not None:  # refuses a run of more than MAX_STEPS before it starts
            self.planned_steps(len(job.train), world_size())
        if self.options.early_stopping_patience and not has_eval:
            raise FinetuneError("training.early_stopping_patience needs a validation split, and there is none")
        if self.options.compile and (why := compile_unavailable()):
            raise FinetuneError(f"training.compile = true: {why}", hint="install g++ (or set $CXX), or set it false")
        holder: dict = {"fitting": True}
        bridge = bridge_events(job, holder, self.logged)
        callbacks = [bridge]
        if self.options.early_stopping_patience and has_eval:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=self.options.early_stopping_patience))
        trainer = self._trainer(job, has_eval, callbacks)
        # the preference trainers' options have no `loss`: they compute their own
        choice = self.loss_choice(job.model, job.engine) if hasattr(self.options, "loss") else None
        trainer.loss_choice = choice
        said = [f"loss: {choice.describe()}"] if choice is not None and choice.name != "plain" else []
        if self.options.compile:
            said.append("the model is compiled (torch.compile)")
        if said:
            job.events.info("; ".join(said))
        self._last = trainer
        try:
            output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        except NonFiniteLoss as exc:
            last = latest_checkpoint(job.checkpoint_dir)
            kept = f"; the last good checkpoint is {last}" if last else "; no checkpoint was written before it"
            raise TrainingDiverged(
                f"training stopped: the loss became {exc.value} at step {exc.step}, before the optimizer step{kept}",
                hint=divergence_hint(self.options),
            ) from None
        except RuntimeError as exc:
            if "timed out" not in str(exc).lower() or world_size() == 1:
                raise
            # A collective (gradient all-reduce, the per-step stop check) waited `timeout` seconds:
            # another process stopped answering. Fail here rather than hang until it returns.
            done, last = trainer.state.global_step, trainer.state.max_steps
            where = f"in step {done + 1}" if done < last else f"after the last step ({done}), saving or evaluating"
            raise FinetuneError(
                f"rank {os.environ.get('RANK', '0')}: a collective waited more than {job.collective_timeout} s for "
                f"the other processes {where}: one of them failed, hangs or is far slower",
                hint="the other ranks' output says which; raise [distributed] timeout if a step really takes that long",
            ) from exc
        finally:
            holder["fitting"] = False
        best = trainer.state.best_model_checkpoint
        return TrainOutcome(
            global_step=trainer.state.global_step,
            train_loss=output.training_loss,
            interrupted=bridge.interrupted,
            best_checkpoint=Path(best) if best else None,
            metrics={k: v for k, v in holder.get("train_summary", {}).items() if isinstance(v, int | float)},
        )

    def evaluate(self, job, dataset) -> dict[str, float]:
        trainer = getattr(self, "_last", None)
        if trainer is None or trainer.model is not job.model:
            with evaluation_only(job.model):
                trainer = self._trainer(job, has_eval=False)
            self._last = trainer
        marked = hasattr(job.model, "_is_accelerate_prepared")
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
        if not marked and hasattr(job.model, "_is_accelerate_prepared"):
            # Evaluating marks the bare model "prepared"; a later `fit` would then skip the DDP wrapper,
            # and each process would train on its own gradients (the base model is evaluated first).
            del job.model._is_accelerate_prepared
        return {k.removeprefix("eval_"): v for k, v in metrics.items()}

    def loss_choice(self, model, engine=None) -> _fused_loss.LossChoice:
        """The loss training computes (training.loss resolved for this model, machine and engine)."""
        import torch

        zero_stage = engine.sharding().zero_stage if engine is not None else 0
        requested = getattr(self.options, "loss", "plain")
        return _fused_loss.choose(requested, model, cuda=torch.cuda.is_available(), zero_stage=zero_stage)

    def training_speed(self, model, engine=None) -> dict:
        """training.loss resolved (the preference trainers' options have none: they compute their own)
        and training.compile."""
        speed = {"compile": self.options.compile}
        if hasattr(self.options, "loss"):
            choice = self.loss_choice(model, engine)
            speed.update(loss=choice.name, loss_why=choice.why)
        return speed

    def resume_checkpoints(self, checkpoint: Path) -> list[tuple[Path, str, str]]:
        """With keep_best, the best checkpoint so far: the run ends by loading its weights."""
        best = recorded_best(checkpoint) if self.options.keep_best else None
        if best is None:
            return []
        return [(best, "the best evaluation so far, whose weights the run ends with", "set training.keep_best = false")]

    def planned_steps(self, train_rows: int, world_size: int = 1) -> int | None:
        """The run's optimizer steps; a FinetuneError when they are more than MAX_STEPS."""
        o = self.options
        if o.max_steps:
            return o.max_steps
        per_epoch = math.ceil(math.ceil(train_rows / (o.batch_size * world_size)) / o.gradient_accumulation_steps)
        steps = math.ceil(per_epoch * o.epochs)
        if steps > MAX_STEPS:
            raise FinetuneError(
                f"training.epochs = {o.epochs:g} plans {steps:,} optimizer steps ({per_epoch:,} per epoch), "
                f"more than the {MAX_STEPS:,} a run may take",
                hint="lower training.epochs, raise training.batch_size, or set training.max_steps",
            )
        return steps


def divergence_hint(options: HFTrainerOptions) -> str:
    """What to try after a NaN/inf loss: gradient clipping only where it is off."""
    if options.max_grad_norm == 0:
        return "lower training.learning_rate, or clip gradients with training.max_grad_norm (e.g. 1.0)"
    return (
        f"lower training.learning_rate (gradients are already clipped to norm {options.max_grad_norm:g}); "
        "check the data for extreme or empty rows"
    )


@hookimpl
def register_trainers(register):
    register(HF)
