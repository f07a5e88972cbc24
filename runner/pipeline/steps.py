"""The steps of one run, in order: prepare the data, build the model, train, evaluate, audit, save.

Each step is done by the component the recipe names; `Pipeline` only wires them together and
keeps the run directory truthful: the final model appears only when complete, and a resumed run
reads back what its start already measured.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.components import RunContext, TrainJob, TrainOutcome
from runner.distributed import process_group
from runner.errors import RunInterrupted, RunStopped
from runner.evaluation.evaluator import Evaluator, MetricsComputer, SplitRows
from runner.pipeline.encoding import default_cache_dir
from runner.pipeline.environment import describe, plugin_versions
from runner.pipeline.model_checks import check_attention_kernel, check_positions
from runner.pipeline.preparing import DataSteps
from runner.pipeline.signals import graceful_stop
from runner.storage import checkpoints
from runner.storage.rundir import RunDir, atomic_write, publish, read_json, write_json
from runner.toolkit import varlen_attention
from runner.toolkit.modeling import (
    auto_class,
    count_parameters,
    describe_parameters,
    match_special_tokens,
    read_last_real_token,
)
from runner.toolkit.quantized import keep_4bit_layout

MODEL_META = "finetune.json"
BASE_MODEL = "base_model"


@dataclass
class RunResult:
    run_dir: RunDir
    metrics: dict[str, Any]
    global_step: int
    model: Any = None  # the trained model, as it was saved
    tokenizer: Any = None
    audits_failed: list[str] = field(default_factory=list)  # model audits that did not pass
    baselines: list[dict[str, Any]] = field(default_factory=list)  # evaluation.json's baselines


class Pipeline(DataSteps):
    """The steps of one run, in order; each step leaves what the next one needs on `self`."""

    def __init__(self, recipe, run_dir, plugins, events, trust_remote_code, resume_from, force):
        self.recipe, self.run_dir, self.plugins, self.events = recipe, run_dir, plugins, events
        self.resume_from, self.force = resume_from, force
        self.main = process_group.is_main()
        self.seed = recipe.run.seed
        self.ctx = RunContext(
            seed=self.seed,
            cache_dir=default_cache_dir(),
            run_dir=run_dir.path,
            trust_remote_code=trust_remote_code,
            info=events.info,
            warn=events.warn,
        )
        self.task = recipe.task.create()
        self.model_component = recipe.model.create()
        self.strategy = recipe.strategy.create()
        self.engine = recipe.distributed.create()  # asked wherever spreading the work matters
        self.precision = getattr(recipe.training.options, "mixed_precision", None)  # what attention computes in
        self.recipe_sha256 = hashlib.sha256(run_dir.recipe.read_bytes()).hexdigest()

    def run(self) -> RunResult:
        from transformers import set_seed

        set_seed(self.seed)
        process_group.main_first(self.prepare)
        self.prepare_evaluation()
        set_seed(self.seed)  # initialisation does not depend on how much randomness data preparation used
        self.build_model()
        self.record_environment()
        outcome = self.train()
        final = self.evaluate(outcome)
        self.audit_finetuned()
        self.write_samples()
        for reward in self.rewards:
            reward.close()
        if self.main:
            self.write_records(final)
        self.events.stage("saving the model")
        model_dir = self.save_model()
        failed = self.audits.failed()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.run_dir.set_status(
            "completed", global_step=outcome.global_step, finished=stamp, exit_code=3 if failed else 0,
            audits_failed=failed,
        )  # fmt: skip
        self.events.info(f"model saved to {model_dir}")
        if self.main:
            self.write_report()
        return RunResult(
            self.run_dir,
            final,
            outcome.global_step,
            model=self.model,
            tokenizer=self.tokenizer,
            audits_failed=failed,
            baselines=self.baseline["baselines"],
        )

    def prepare(self) -> None:
        """Data, tokenizer, tokenized rows: on rank 0 first; the other ranks then read its caches."""
        self.load_data()
        self.audit_data()
        self.prepare_tokenizer()
        self.tokenize()

    def prepare_evaluation(self) -> None:
        self.metrics = [spec.create() for spec in self.recipe.metrics]
        for metric in self.metrics:
            metric.prepare(self.ctx)
        self.rewards = [spec.create() for spec in self.recipe.rewards]
        for reward in self.rewards:
            reward.prepare(self.ctx)
        self.trainer = self.recipe.training.create()
        pad_to = self.max_length if self.recipe.tokenizer.options.padding == "max_length" else None
        self.collator = self.task.collator(self.tokenizer, pad_to)
        train = self.data.parts("train")
        self.evaluator = Evaluator(
            options=self.recipe.evaluation,
            trainer=self.trainer,
            task=self.task,
            tokenizer=self.tokenizer,
            max_length=self.max_length,
            metrics=self.metrics,
            collator=self.collator,
            splits={
                split: SplitRows([(s.task, s.splits[split]) for s in self.data.parts(split)], self.encoded[split])
                for split in ("validation", "test")
                if split in self.encoded
            },
            train_rows=train[0].splits["train"] if len(train) == 1 else None,
            seed=self.seed,
            events=self.events,
            checkpoint_dir=self.run_dir.checkpoints,  # evaluating writes nothing there
            train_labels=list(self.encoded["train"]["labels"]) if self.task.produces == "classes" else None,
            rewards=self.rewards,
        )

    def build_model(self) -> None:
        from runner.pipeline.packing import check_packing, packing_kernel

        self.events.stage("building the model")
        kernel = self.model_component.attention_kernel()
        check_attention_kernel(kernel)  # before a base is loaded for nothing
        packing = getattr(self.task.options, "packing", False)
        self.spec = self.trainer.model_spec(self.task.model_spec(self.tokenizer, self.max_length))
        # Absolute: an adapter names its base by this path, and must load from any folder.
        base_dir = (self.run_dir.path / BASE_MODEL).resolve()
        had_base = base_dir.is_dir()  # read once: under ZeRO-3 every rank must take the same branch below
        # An engine that shards the weights builds them sharded (ZeRO-3: zero.Init), never whole on a process.
        with self.engine.building(self.model_component, self.trainer):
            if had_base:  # resuming an adapter run whose base exists only here
                model = auto_class(self.spec.head).from_pretrained(base_dir)
            else:
                model = self.model_component.build(self.ctx, self.spec)
                if self.model_component.base_reference() is None:  # built from a config: the tokenizer's ids
                    match_special_tokens(model, self.tokenizer)
        keep_4bit_layout(model)  # before any forward: see runner/toolkit/quantized.py
        check_positions(model, self.max_length, self.strategy.extra_positions())
        if packing:  # the samples of a packed row must not mix: the base's own attention, before measuring it
            with self.engine.whole_model(model):  # the probe's forward pass needs every weight (ZeRO-3)
                kernel = packing_kernel(model, kernel, self.precision, self.events.info)
                check_packing(model, kernel)
        self.measure_base(model)
        from transformers import set_seed

        set_seed(self.seed)  # adapters initialise alike whether or not the base was measured
        if self.strategy.saves_adapter() and self.model_component.base_reference() is None:
            # A random-init base exists only in this run: keep it, so that the adapter can be loaded.
            if not had_base:  # every rank comes (a sharded model is gathered); one writes
                self.engine.save_model(model, None, base_dir, self.tokenizer.save_pretrained, publish)
            model.name_or_path = str(base_dir)  # peft records this as the adapter's base model
        self.model = read_last_real_token(self.strategy.apply(model, self.ctx, self.spec))
        if packing:  # and what the strategy wraps around it
            with self.engine.whole_model(self.model):
                check_packing(self.model, kernel)
        self.parameters = count_parameters(self.model)
        self.events.info(f"{self.recipe.strategy.name}: {describe_parameters(self.parameters)}")

    def record_environment(self) -> None:
        if not self.main or (self.resume_from is not None and self.run_dir.environment.is_file()):
            return  # it describes how the run started
        env = describe(self.recipe.source.base_dir, plugin_versions(self.plugins))
        env.update(
            seed=self.seed,
            data=self.data.fingerprints,
            split_sizes=self.data.sizes(),
            recipe_sha256=self.recipe_sha256,
            max_length=self.max_length,
            parameters=self.parameters,
            world_size=process_group.world_size(),
            distributed=self.recipe.distributed.as_table(),
        )
        env["attention"] = varlen_attention.describe(self.model, self.precision)  # the kernel built, chosen or not
        env["training_speed"] = self.trainer.training_speed(self.model, self.engine)  # its loss, compile
        source = self.model_component.source()
        if source is not None:
            env["model_source"] = source
        write_json(self.run_dir.environment, env)

    def measure_base(self, model) -> None:
        """The baselines, the model audits' base figures and the answers to the sample prompts, before
        anything trains (read back from baseline.json when a resumed run measured them already)."""
        path = self.run_dir.path / RunDir.BASELINE
        self.baseline: dict[str, Any] = {"baselines": [], "audits": {}}
        if path.is_file() and self.resume_from is not None:
            self.baseline = read_json(path)
            self.audits.base = self.baseline["audits"]
            return
        wanted = self.recipe.evaluation.baseline and self.evaluator.splits
        sharded = self.engine.sharding().shards_weights
        if sharded and (wanted or self.audits.model_audits):
            self.events.warn("no baseline under ZeRO-3: every process would hold the whole base model")
        if sharded:
            return
        if wanted or self.audits.model_audits:
            self.events.stage("measuring the base model")
        random_init = self.model_component.base_reference() is None
        if wanted:
            described = self.model_component.describe_base()
            self.baseline["baselines"] = self.evaluator.baselines(model, random_init, described)
            for row in self.baseline["baselines"]:
                for split in ("validation", "test"):
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in row.get(split, {}).items() if k in self.shown)
                    if shown:
                        self.events.info(f"{row['name']}, {split}: {shown}")
        if self.audits.model_audits:
            self.baseline["audits"] = self.audits.measure(
                "base", model, self.tokenizer, self.task, self.max_length, self.audit_rows
            )
        if self.recipe.evaluation.baseline:
            # the recipe's sample prompts answered before training, shown beside the answers after it
            self.baseline["samples"] = self.task.samples(model, self.tokenizer, self.max_length)
        if self.main and (wanted or self.audits.model_audits or self.baseline.get("samples")):
            write_json(path, self.baseline)

    @property
    def shown(self) -> set[str]:
        """The scores worth a line: loss and the recipe's metrics, not timings."""
        rewarded = {"reward", "pass_rate", *(f"reward/{r.key()}" for r in self.rewards)} if self.rewards else set()
        return {"loss", *(m.key() for m in self.metrics), *rewarded}

    def train(self) -> TrainOutcome:
        self.job = TrainJob(
            model=self.model,
            tokenizer=self.tokenizer,
            task=self.task,
            train=self.encoded["train"],
            evaluation=self.encoded.get("validation"),
            collator=self.collator,
            compute_metrics=MetricsComputer(self.task, self.metrics),
            checkpoint_dir=self.run_dir.checkpoints,
            seed=self.seed,
            events=self.events,
            resume_from=self.resume_from,
            deterministic=self.recipe.run.deterministic,
            greater_is_better={m.key(): m.greater_is_better for m in self.metrics},
            engine=self.engine,
            collective_timeout=self.engine.collective_timeout(),
            objective=self.recipe.objective.create() if self.recipe.objective else None,
            rewards=self.rewards,
            rows=[(part.task, part.splits["train"]) for part in self.data.parts("train")],
        )
        self.events.stage("training")
        with graceful_stop(self.events.warn) as stop:
            # every rank stops at the same step, whichever of them got the signal
            self.job.stop_requested = lambda: process_group.any_rank(stop.is_set() or self._stop_reason() is not None)
            outcome = self.trainer.fit(self.job)
        reason = self._stop_reason()
        if outcome.interrupted and reason is not None and not stop.is_set():
            self.run_dir.set_status("stopped", global_step=outcome.global_step, reason=reason)
            raise RunStopped(f"{reason} (stopped at step {outcome.global_step})")
        if outcome.interrupted:
            last = checkpoints.latest_complete(self.run_dir.checkpoints)
            self.run_dir.set_status("interrupted", global_step=outcome.global_step, checkpoint=str(last))
            raise RunInterrupted(
                f"interrupted at step {outcome.global_step}; checkpoint saved: {last}",
                hint=f"continue with: finetune resume {self.run_dir.path}",
            )
        return outcome

    def _stop_reason(self) -> str | None:
        return self.events.stop_when() if self.main else None

    def evaluate(self, outcome: TrainOutcome) -> dict[str, Any]:
        self.events.stage("evaluating")
        final: dict[str, Any] = {"train": {"global_step": outcome.global_step, **outcome.metrics}}
        final.update(self.evaluator.final(self.job, self.encoded_parts))
        best = getattr(self.recipe.training.options, "best_metric", "loss")
        self.evaluator.compare_with_majority(self.baseline["baselines"], final, best)
        return final

    def audit_finetuned(self) -> None:
        if not self.audits.model_audits:
            return
        self.events.stage("auditing the fine-tuned model")
        with self.engine.whole_model(self.model):
            figures = self.audits.measure(
                "finetuned", self.model, self.tokenizer, self.task, self.max_length, self.audit_rows
            )
        self.audits.judge(figures)

    def write_records(self, final: dict[str, Any]) -> None:
        """metrics.json, evaluation.json, audits.json, data_stats.json: what the report and the
        model card are made of."""
        from runner.evaluation.diagnosis import diagnose

        write_json(self.run_dir.metrics, final)
        best = getattr(self.recipe.training.options, "best_metric", "loss")
        greater = {"loss": False, **{m.key(): m.greater_is_better for m in self.metrics}}
        evaluation = {
            "greater_is_better": greater,
            "baselines": self.baseline["baselines"],
            "finetuned": {k: v for k, v in final.items() if k != "train"},
            **self.evaluator.record,
            "diagnosis": diagnose(self.run_dir.read_metrics_log(), best, greater.get(best, False)),
        }
        write_json(self.run_dir.path / RunDir.EVALUATION, evaluation)
        write_json(self.run_dir.path / RunDir.DATA_STATS, self.data_stats)
        if self.audits:
            write_json(self.run_dir.path / RunDir.AUDITS, self.audits.document())

    def write_report(self) -> None:
        from runner.report.page import build_report

        try:
            path = build_report(self.run_dir.path)
        except Exception as exc:  # the model is saved: a report that cannot be drawn must not fail the run
            self.events.warn(f"report.html could not be written: {type(exc).__name__}: {exc}")
            return
        self.events.info(f"report: {path}")

    def write_samples(self) -> None:
        # every rank generates: under ZeRO-3 each holds only a shard of the weights
        samples = self.task.samples(self.model, self.tokenizer, self.max_length)
        before = self.baseline.get("samples") or []
        if len(before) == len(samples):
            for sample, base in zip(samples, before, strict=True):
                answer = base.get("response", base.get("completion"))
                if sample.get("prompt") == base.get("prompt") and answer is not None:
                    sample["before"] = answer
        if samples and self.main:
            lines = "".join(json.dumps(sample, ensure_ascii=False) + "\n" for sample in samples)
            atomic_write(self.run_dir.path / "samples.jsonl", lines)
            self.events.info(f"{len(samples)} generated samples written to samples.jsonl")

    def save_model(self) -> Path:
        base_dir = (self.run_dir.path / BASE_MODEL).resolve()
        meta = {
            "task": self.recipe.task.name,
            "task_state": self.task.state(),
            "head": self.spec.head,
            "strategy": self.recipe.strategy.name,
            "adapter": self.strategy.saves_adapter(),
            "base_model": self.model_component.base_reference() or (str(base_dir) if base_dir.is_dir() else None),
            "max_length": self.max_length,
            "parameters": self.parameters,
            "recipe": self.recipe.name,
        }

        def write_rest(directory: Path) -> None:
            from runner.report.model_card import write_model_card

            self.tokenizer.save_pretrained(directory)
            write_json(directory / MODEL_META, meta)
            write_model_card(self.run_dir.path, directory)

        # Every rank comes: an engine that shards the weights gathers them first, else saving would
        # write empty tensors (a known failure of other tools); DeepSpeed's ZeRO-3 gathers one layer
        # at a time to rank 0, never the whole model on every process.
        self.engine.save_model(self.model, self.strategy, self.run_dir.model, write_rest, publish)
        process_group.barrier()
        return self.run_dir.model
