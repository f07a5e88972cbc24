"""The pieces trainer `hf` (plugins/trainers/hf.py) builds on transformers' `Trainer`, made on first
use so that importing the plugin imports neither torch nor transformers:

- `make_trainer_class`: the `Trainer` subclass (of transformers' `Trainer`, or of a subclass of it
  given as `base`, as TRL's `DPOTrainer` for trainer `dpo`), with a length-grouped sampler seeded per epoch (a
  resumed run takes the batches the uninterrupted one would have), a loss checked for NaN or
  infinity before backward (`NonFiniteLoss`), per-row weights, checkpoints marked complete
  before rotation (and, under ZeRO-3, virtual tokens gathered on every rank before one saves them),
  and the best checkpoint found in this run directory and loaded as it was written: the engine says
  how (`Engine.trainer_settings` for that checkpoint: under DeepSpeed, one of another number of
  processes through its universal conversion, any other natively);
- `recorded_best`: the best checkpoint a checkpoint's trainer state records, which a resume on
  another number of processes has the engine make loadable too;
- `bridge_events`: the callback that passes progress to the run's events and stops at the end of the
  step when the job is asked to stop (Ctrl-C, SIGTERM);
- `compile_unavailable`, `evaluation_only`: why torch.compile cannot run here; a quantized base
  evaluated by a Trainer.

The subclass's training steps compute a causal LM's loss chunked (or with Liger's kernel) where the
trainer set `loss_choice` (plugins/trainers/_fused_loss.py).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from plugins.trainers._fused_loss import fused_loss
from runner import (
    FinetuneError,
    PeerFailed,
    any_rank,
    barrier,
    checkpoint_is_complete,
    checkpoint_step,
    clip,
    mark_checkpoint_complete,
    rotate_checkpoints,
)

TRAINER_STATE = "trainer_state.json"  # the Hugging Face Trainer's record, in each of its checkpoints


class NonFiniteLoss(Exception):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss {value} at step {step}")
        self.step, self.value = step, value


def make_trainer_class(base=None):
    import torch
    import transformers
    from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

    class EpochSeededLengthSampler(LengthGroupedSampler):
        """Length grouping whose order depends only on (seed, epoch).

        transformers' sampler draws from the global RNG when an epoch starts, so a run resumed
        mid-epoch would see a different order than the run it continues. Seeding per epoch makes
        a resumed run take exactly the batches the uninterrupted one would have."""

        def __init__(self, batch_size, lengths, seed):
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    token_weighted = {
        *MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values(),
        *MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES.values(),
    }

    class BestCheckpointHere(transformers.TrainerCallback):
        """transformers records the best checkpoint by the path it had when it was written. A run
        directory copied or moved since (a sweep trial continued on another machine) would then
        load another run's checkpoint, or, where that path is gone, end with the last weights
        instead of the best. The best is this run's checkpoint of the recorded step."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.best_global_step:
                here = Path(args.output_dir) / f"checkpoint-{state.best_global_step}"
                state.best_model_checkpoint = str(here) if here.is_dir() else None

    class _Trainer(base or transformers.Trainer):
        keep_checkpoints = 2

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(BestCheckpointHere)
            # transformers hands `num_items_in_batch` to any model whose forward takes **kwargs, then
            # skips the division by gradient_accumulation_steps and multiplies the loss by the number
            # of processes, trusting the model to divide by that global count. Language-model losses
            # do; most other heads take a plain mean, and would train with gradient_accumulation_steps
            # x processes times the learning rate. Only the language-model heads keep that path.
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            if type(base).__name__ not in token_weighted:
                self.model_accepts_loss_kwargs = False

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and "length" in dataset.column_names:
                # Grouped by the global batch: the rows of one optimizer step are the same whether
                # one process takes them all or N processes take a share each.
                batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
                return EpochSeededLengthSampler(batch, list(dataset["length"]), self.args.data_seed or self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = inputs.pop("weight", None)
            fused = getattr(self, "loss_choice", None)  # set by trainer hf (training.loss)
            if weight is not None:
                result = self._weighted_loss(model, inputs, weight, return_outputs)
            elif fused and fused.name != "plain" and model.training and not return_outputs and "labels" in inputs:
                # Training steps only: evaluation returns the logits its metrics read.
                result = fused_loss(self, model, inputs, num_items_in_batch, fused)
            else:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if return_outputs else result
            # Checked before backward: a non-finite loss never reaches the weights or the optimizer.
            # All ranks agree, so that none waits forever in the gradient reduction of the others.
            if model.training and any_rank(not torch.isfinite(loss.detach()).all()):
                raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
            return result

        def _weighted_loss(self, model, inputs, weight, return_outputs):
            """A sequence classifier's cross-entropy with each row weighted (an audit's reweighting):
            the mean of weight x row loss, so that weights of mean 1 keep the loss's scale."""
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            rows = torch.nn.functional.cross_entropy(outputs.logits.float(), labels, reduction="none")
            loss = (rows * weight.to(rows.dtype)).mean()
            return (loss, outputs) if return_outputs else loss

        def _save(self, output_dir=None, state_dict=None):
            with _prompt_encoder_gathered(self.model):  # every rank comes here; rank 0 alone writes
                super()._save(output_dir, state_dict)

        def _load_best_model(self):
            engine = self.model_wrapped
            if not self.is_deepspeed_enabled or not hasattr(engine, "_config"):
                return super()._load_best_model()
            # DeepSpeed takes `checkpoint.load_universal` from the config its engine was built with:
            # on in a resume on another number of processes, for the checkpoint resumed from. The
            # best checkpoint may be one written before the resize (another number of processes:
            # loadable only through the universal conversion `finetune resume` made) or after it
            # (this number: only its own files, `latest`); the setting follows the one the run's
            # engine gives for the checkpoint loaded here.
            best = Path(self.state.best_model_checkpoint)
            universal = _loads_as_universal(best, getattr(self, "run_engine", None))
            built_with = engine._config.load_universal_checkpoint
            engine._config.load_universal_checkpoint = universal
            try:
                super()._load_best_model()
            except (FinetuneError, KeyboardInterrupt):
                raise
            except Exception as exc:  # DeepSpeed raises ValueError, RuntimeError, assertions...
                stop_every_rank(
                    f"training is done, but the weights of the best checkpoint, {best}, could not be loaded "
                    f"to end the run with: {type(exc).__name__}: {clip(str(exc))}",
                    hint="the checkpoints are kept: `finetune resume RUN` loads the best one again and ends the run",
                    cause=exc,
                )
            finally:
                engine._config.load_universal_checkpoint = built_with

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            # Under DeepSpeed every rank writes its shard: the checkpoint is complete when all have.
            barrier()
            if not self.args.should_save:
                return
            path = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            mark_checkpoint_complete(path)
            best = Path(self.state.best_model_checkpoint) if self.state.best_model_checkpoint else None
            rotate_checkpoints(path.parent, self.keep_checkpoints, protect=best)

    return _Trainer


def _loads_as_universal(best: Path, engine) -> bool:
    """Whether DeepSpeed must load the checkpoint `best` as universal, as the run's `engine` sets it
    up for that checkpoint; when it cannot be loaded on this number of processes, every rank stops."""
    try:
        settings = engine.trainer_settings("transformers", best) if engine is not None else {}
    except FinetuneError as exc:
        stop_every_rank(
            f"training is done, but the best checkpoint cannot be loaded: {exc.message}",
            hint=f"{exc.hint + '; or ' if exc.hint else ''}set training.keep_best = false",
        )
    config = settings.get("deepspeed") or {}
    return bool(isinstance(config, dict) and config.get("checkpoint", {}).get("load_universal", False))


def recorded_best(checkpoint: Path) -> Path | None:
    """The checkpoint that the trainer state saved in `checkpoint` records as the best evaluation so
    far, looked for beside `checkpoint` by its step: the path recorded is where the run directory
    was then, which a copied or moved run no longer is. None when none is recorded, or it is not a
    complete checkpoint of this run."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(state, dict):
        return None
    step = state.get("best_global_step")
    if not isinstance(step, int) or isinstance(step, bool):  # older states record only the path
        path = state.get("best_model_checkpoint")
        step = checkpoint_step(Path(path)) if isinstance(path, str) else None
    if step is None:
        return None
    best = checkpoint.parent / f"checkpoint-{step}"
    return best if checkpoint_is_complete(best) else None


def stop_every_rank(message: str, hint: str | None = None, cause: BaseException | None = None):
    """Raise on every rank for a failure they all meet together: rank 0 says why (a FinetuneError),
    the others stop without repeating it (the worker exits quietly on PeerFailed)."""
    rank = os.environ.get("RANK", "0")
    if rank != "0":
        raise PeerFailed(f"rank {rank}: stopping, rank 0 reports why") from cause
    raise FinetuneError(message, hint=hint) from cause


@contextmanager
def _prompt_encoder_gathered(model):
    """peft saves a virtual-token adapter by running its prompt encoder. Under ZeRO-3 that forward
    gathers the encoder's partitioned weights, a collective, and DeepSpeed counts the call in its
    record of the module order; transformers saves on rank 0 alone, so rank 0 waited in the gather
    for ranks that never came (the hang that made prompt and prefix tuning refuse ZeRO-3), and its
    record no longer matched the others'. So every rank gathers the encoder's weights before the
    save (`_save` is entered by every rank, and returns at once on those that do not write), and
    the saving forward runs without DeepSpeed's hooks: nothing to fetch, nothing recorded."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    encoder = getattr(model, "prompt_encoder", None)
    if encoder is None or not is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    modules = list(encoder.modules())
    hooks = [(m._forward_pre_hooks.copy(), m._forward_hooks.copy()) for m in modules]
    with deepspeed.zero.GatheredParameters(list(encoder.parameters()), modifier_rank=None):
        for module in modules:
            module._forward_pre_hooks.clear()
            module._forward_hooks.clear()
        try:
            yield
        finally:
            for module, (pre, post) in zip(modules, hooks, strict=True):
                module._forward_pre_hooks.update(pre)
                module._forward_hooks.update(post)


LOGGED = ("loss", "learning_rate", "grad_norm", "epoch")  # what a training log passes to the events


def bridge_events(job, state_holder, logged=LOGGED):
    from transformers import TrainerCallback

    class Bridge(TrainerCallback):
        interrupted = False

        def on_train_begin(self, args, state, control, **kwargs):
            job.events.train_begin(state.max_steps, state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                job.events.log(state.global_step, {k: logs[k] for k in logged if k in logs})
            elif "train_runtime" in logs:
                state_holder["train_summary"] = dict(logs)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state_holder.get("fitting"):
                values = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items()}
                job.events.evaluated("validation", state.global_step, values)
                # A stop decided on these scores (a sweep's pruner) stops at this step, not after the next.
                if state.global_step < state.max_steps:
                    self.on_step_end(args, state, control)

        def on_step_end(self, args, state, control, **kwargs):
            if job.stop_requested():
                self.interrupted = True
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            job.events.train_end()

    return Bridge()


@contextmanager
def evaluation_only(model):
    """transformers' Trainer refuses a quantized model without adapters, even one it only evaluates
    (the base before adapters are attached, measured as the baseline). Its check reads this flag;
    evaluating changes no weight, so the flag is raised only while the Trainer is built."""
    if not getattr(model, "is_quantized", False) or getattr(model, "_hf_peft_config_loaded", False):
        yield
        return
    model._hf_peft_config_loaded = True
    try:
        yield
    finally:
        del model._hf_peft_config_loaded


def compile_unavailable() -> str | None:
    """Why torch.compile cannot train here, or None: its default backend (inductor) builds C++ for
    the CPU, with the compiler $CXX names (g++ by default); on CUDA it uses the Triton torch ships."""
    import shutil

    import torch

    if torch.cuda.is_available():
        return None
    compilers = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in compilers):
        return f"torch.compile on the CPU needs a C++ compiler, and none of {', '.join(compilers)} is on PATH"
    return None
