"""Running a recipe: data, tokenizer, model, strategy, training, evaluation, saving.

`execute` runs (or resumes) one run in its run directory. Each step is done by the component the
recipe names; this module only wires them together and keeps the run directory truthful: the
status says what happened, the final model appears only when complete, a resume continues from
the last complete checkpoint and refuses data that changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.components import RunContext, TrainJob, TrainOutcome
from runner.distributed import process_group
from runner.errors import FinetuneError, RunInterrupted
from runner.evaluation.audits import Audits, audit_data
from runner.evaluation.evaluator import Evaluator, MetricsComputer, SplitRows
from runner.pipeline import checkpoints
from runner.pipeline.data import prepare_data
from runner.pipeline.encoding import default_cache_dir, encode_sources
from runner.pipeline.environment import describe
from runner.pipeline.events import Events
from runner.pipeline.modeling import (
    auto_class,
    count_parameters,
    describe_parameters,
    ensure_pad_token,
    read_last_real_token,
)
from runner.pipeline.rundir import ReadOnlyRunDir, RunDir, atomic_write, publish_dir, read_json, write_json
from runner.pipeline.signals import graceful_stop
from runner.plugins.manager import Plugins
from runner.recipe.resolved import Recipe

MODEL_META = "finetune.json"
BASE_MODEL = "base_model"
TOKENIZER = "tokenizer"


@dataclass
class RunResult:
    run_dir: RunDir
    metrics: dict[str, Any]
    global_step: int
    model: Any = None  # the trained model, as it was saved
    tokenizer: Any = None
    audits_failed: list[str] = field(default_factory=list)  # model audits that did not pass
    baselines: list[dict[str, Any]] = field(default_factory=list)  # evaluation.json's baselines


def quiet_libraries(debug: bool) -> None:
    """Library chatter (progress bars, info logs) would drown the reporter; --debug brings it back."""
    import datasets
    import torch
    import transformers

    if not torch.cuda.is_available():  # DeepSpeed warns on every import when it has to guess this
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if debug:
        transformers.logging.set_verbosity_info()
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plugin_versions(plugins: Plugins) -> dict[str, str]:
    return {
        name: f"{info.version} ({info.source})" for name, info in plugins.registry.plugins.items() if not info.error
    }


def resolve_max_length(recipe: Recipe, tokenizer, model_component) -> int:
    """tokenizer.max_length, or the longest input the model and tokenizer allow, less the
    positions the strategy's virtual tokens take."""
    explicit = recipe.tokenizer.options.max_length
    if explicit:
        return explicit
    limits = [model_component.max_positions()]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    known = [x for x in limits if x]
    return (min(known) if known else 512) - recipe.strategy.create().extra_positions()


def check_positions(model, max_length: int, extra: int = 0) -> None:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    if isinstance(limit, int) and max_length + extra > limit:
        also = f" plus {extra} virtual tokens" if extra else ""
        raise FinetuneError(
            f"tokenizer.max_length = {max_length}{also} exceeds the model's {limit} positions",
            hint=f"set tokenizer.max_length <= {limit - extra}",
        )


def _fingerprints_changed(old: list[dict], new: list[dict]) -> str | None:
    if old == new:
        return None
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            return f"data.sources[{i}] ({a.get('source')}) no longer matches what the run started with"
    return "the number of data sources changed"


def execute(
    recipe: Recipe,
    run_dir: RunDir,
    plugins: Plugins,
    *,
    trust_remote_code: bool = False,
    resume_from: Path | None = None,
    force: bool = False,
    debug: bool = False,
) -> RunResult:
    """Run `recipe` in `run_dir`, from scratch or from the checkpoint `resume_from`.

    In a launched run every process calls this; only rank 0 reports and writes the run directory."""
    main = process_group.is_main()
    if not main:
        run_dir = ReadOnlyRunDir(run_dir.path)
    resolved = recipe.resolved()
    run_info = {
        "name": recipe.name,
        "run_dir": str(run_dir.path),
        "seed": recipe.run.seed,
        "recipe": resolved,
    }
    reporters = [spec.create() for spec in recipe.reporters] if main else []
    events = Events(reporters, run_dir, plugins.hook if main else None, run_info)
    if resume_from is None:
        run_dir.write_recipe(resolved)
    run_dir.set_status("running", pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    if main:
        plugins.hook.on_run_start(run=run_info)
    events.start(run_info)
    status, final, baselines = "failed", {}, []
    try:
        quiet_libraries(debug)
        if recipe.run.threads:
            import torch

            torch.set_num_threads(recipe.run.threads)
        process_group.init()
        result = _Pipeline(recipe, run_dir, plugins, events, trust_remote_code, resume_from, force).run()
        status, final, baselines = "completed", result.metrics, result.baselines
        return result
    except RunInterrupted:
        status = "interrupted"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        last = checkpoints.latest_complete(run_dir.checkpoints)
        run_dir.set_status("interrupted", checkpoint=str(last) if last else None)
        where = f"the last complete checkpoint is {last}" if last else "no checkpoint was saved"
        raise RunInterrupted(f"interrupted; {where}", hint=f"finetune resume {run_dir.path}") from None
    except BaseException as exc:
        run_dir.set_status("failed", error=f"{type(exc).__name__}: {exc}", exit_code=getattr(exc, "exit_code", 1))
        raise
    finally:
        events.finish(status, {"name": recipe.name, "metrics": final, "baselines": baselines,
                               "run_dir": str(run_dir.path),
                               "model_dir": str(run_dir.model) if status == "completed" else None})  # fmt: skip
        if main:
            plugins.hook.on_run_end(run=run_info, status=status, metrics=final)
        process_group.finish()


def publish(final: Path, write) -> Path:
    """Have `write(directory)` fill a temporary directory beside `final`, then rename it to `final`."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    publish_dir(tmp, final)
    return final


class _Pipeline:
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

    def audit_data(self) -> None:
        """Data audits (leakage) stop the run here, before anything is tokenized; then the
        mitigations the audits ask for change the training rows."""
        self.audits = Audits(self.recipe.audits, self.ctx, self.events)
        if not self.audits:
            return
        self.events.stage("auditing the data")
        self.audits.drop(self.data, self.audits.check_data(audit_data(self.data)))
        self.audits.mitigate(self.data)
        self.audit_rows = audit_data(self.data)  # what model audits read, mitigations included

    def load_data(self) -> None:
        self.events.stage("loading data")
        self.data = prepare_data(self.recipe, self.task, self.ctx)
        for note in self.data.notes:
            self.events.info(note)
        self.events.info("rows: " + ", ".join(f"{k} {v}" for k, v in self.data.sizes().items()))
        if self.resume_from is None or self.force or not self.run_dir.environment.is_file():
            return
        started = read_json(self.run_dir.environment)
        changed = _fingerprints_changed(started.get("data", []), self.data.fingerprints)
        if changed:
            raise FinetuneError(f"cannot resume: {changed}", hint="pass --force to resume with the new data anyway")
        if started.get("recipe_sha256") != self.recipe_sha256:
            raise FinetuneError(
                f"cannot resume: {self.run_dir.recipe} changed since the run started",
                hint="pass --force to resume with the edited recipe anyway",
            )

    def prepare_tokenizer(self) -> None:
        self.events.stage("preparing the tokenizer")
        saved = self.ctx.tokenizer_dir = self.run_dir.path / TOKENIZER
        if saved.is_dir():
            # A resumed run uses the tokenizer it started with, never a re-trained or re-downloaded one.
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(saved)
            self.prepare_tokenizer_for_tasks()  # already done: this only tells the tasks
            self.max_length = self.tokenizer.model_max_length
            return
        self.tokenizer = self.recipe.tokenizer.create().build(self.ctx, self.training_texts)
        for note in (ensure_pad_token(self.tokenizer), *self.prepare_tokenizer_for_tasks()):
            if note:
                self.events.info(note)
        self.max_length = resolve_max_length(self.recipe, self.tokenizer, self.model_component)
        self.tokenizer.model_max_length = self.max_length
        if self.main:
            publish(saved, self.tokenizer.save_pretrained)

    def training_texts(self):
        for source in self.data.parts("train"):
            yield from source.task.training_texts(source.splits["train"])

    def prepare_tokenizer_for_tasks(self) -> list[str | None]:
        """Every task variant adapts the tokenizer; the recipe's own task goes last, so that its
        chat template is the one saved with the tokenizer."""
        variants = {id(s.task): s.task for s in self.data.sources if s.task is not self.task}
        return [t.prepare_tokenizer(self.tokenizer) for t in (*variants.values(), self.task)]

    def tokenize(self) -> None:
        self.events.stage("tokenizing")
        encoded = encode_sources(self.data, self.tokenizer, self.max_length, self.ctx.cache_dir, self.seed)
        self.encoded, self.encoded_parts = encoded.splits, encoded.parts
        if encoded.from_cache:
            self.events.info("encoded rows read from the cache: " + ", ".join(sorted(encoded.from_cache)))
        for note in encoded.notes:
            self.events.info(note)
        self.data_stats = self._data_stats()
        if getattr(self.task.options, "packing", False):
            from runner.pipeline.packing import pack

            before = len(self.encoded["train"])
            self.encoded["train"] = pack(self.encoded["train"], self.max_length)
            lengths = self.encoded["train"]["length"]
            fill = sum(lengths) / (len(lengths) * self.max_length)
            self.events.info(f"packed {before} training rows into {len(lengths)} rows, {fill:.0%} full")

    def _data_stats(self) -> dict[str, Any]:
        from runner.evaluation.data_stats import data_stats

        labels = getattr(self.task, "labels", None) if self.task.produces == "classes" else None
        return data_stats(
            lengths={split: list(ds["length"]) for split, ds in self.encoded.items()},
            labels={split: list(ds["labels"]) for split, ds in self.encoded.items()} if labels else None,
            label_names=labels,
            max_length=self.max_length,
        )

    def prepare_evaluation(self) -> None:
        self.metrics = [spec.create() for spec in self.recipe.metrics]
        for metric in self.metrics:
            metric.prepare(self.ctx)
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
        )

    def build_model(self) -> None:
        self.events.stage("building the model")
        self.spec = self.task.model_spec(self.tokenizer, self.max_length)
        # Absolute: an adapter names its base by this path, and must load from any folder.
        base_dir = (self.run_dir.path / BASE_MODEL).resolve()
        if base_dir.is_dir():  # resuming an adapter run whose base exists only here
            model = auto_class(self.spec.head).from_pretrained(base_dir)
        else:
            model = self.model_component.build(self.ctx, self.spec)
        check_positions(model, self.max_length, self.strategy.extra_positions())
        self.measure_base(model)
        from transformers import set_seed

        set_seed(self.seed)  # adapters initialise alike whether or not the base was measured
        if self.strategy.saves_adapter() and self.model_component.base_reference() is None:
            # A random-init base exists only in this run: keep it, so that the adapter can be loaded.
            if self.main and not base_dir.is_dir():
                publish(base_dir, lambda d: (model.save_pretrained(d), self.tokenizer.save_pretrained(d)))
            model.name_or_path = str(base_dir)  # peft records this as the adapter's base model
        self.model = read_last_real_token(self.strategy.apply(model, self.ctx, self.spec))
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
        write_json(self.run_dir.environment, env)

    def measure_base(self, model) -> None:
        """The baselines and the model audits' base figures, before anything trains (read back
        from baseline.json when a resumed run measured them already)."""
        path = self.run_dir.path / RunDir.BASELINE
        self.baseline: dict[str, Any] = {"baselines": [], "audits": {}}
        if path.is_file() and self.resume_from is not None:
            self.baseline = read_json(path)
            self.audits.base = self.baseline["audits"]
            return
        wanted = self.recipe.evaluation.baseline and self.evaluator.splits
        if not (wanted or self.audits.model_audits):
            return
        if self.recipe.distributed.create().sharding().zero_stage == 3:
            self.events.warn("no baseline under ZeRO-3: every process would hold the whole base model")
            return
        self.events.stage("measuring the base model")
        random_init = self.model_component.base_reference() is None
        if wanted:
            self.baseline["baselines"] = self.evaluator.baselines(model, random_init)
            for row in self.baseline["baselines"]:
                for split in ("validation", "test"):
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in row.get(split, {}).items() if k in self.shown)
                    if shown:
                        self.events.info(f"{row['name']}, {split}: {shown}")
        if self.audits.model_audits:
            self.baseline["audits"] = self.audits.measure(
                "base", model, self.tokenizer, self.task, self.max_length, self.audit_rows
            )
        if self.main:
            write_json(path, self.baseline)

    @property
    def shown(self) -> set[str]:
        """The scores worth a line: loss and the recipe's metrics, not timings."""
        return {"loss", *(m.key() for m in self.metrics)}

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
            deepspeed=self.recipe.distributed.create().deepspeed_config(),
        )
        self.events.stage("training")
        with graceful_stop(self.events.warn) as stop:
            # every rank stops at the same step, whichever of them got the signal
            self.job.stop_requested = lambda: process_group.any_rank(stop.is_set())
            outcome = self.trainer.fit(self.job)
        if outcome.interrupted:
            last = checkpoints.latest_complete(self.run_dir.checkpoints)
            self.run_dir.set_status("interrupted", global_step=outcome.global_step, checkpoint=str(last))
            raise RunInterrupted(
                f"interrupted at step {outcome.global_step}; checkpoint saved: {last}",
                hint=f"continue with: finetune resume {self.run_dir.path}",
            )
        return outcome

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
        with self.trainer.whole_model(self.job):
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

        def write(directory: Path) -> None:
            from runner.report.model_card import write_model_card

            self.strategy.save(self.model, directory)
            self.tokenizer.save_pretrained(directory)
            write_json(directory / MODEL_META, meta)
            write_model_card(self.run_dir.path, directory)

        # Under ZeRO-3 each rank holds a shard of every weight: saving then would write empty
        # tensors (a known failure of other tools), so the weights are gathered first.
        with self.trainer.whole_model(self.job):
            if self.main:
                publish(self.run_dir.model, write)
        process_group.barrier()
        return self.run_dir.model
