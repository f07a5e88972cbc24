"""Evaluation a user can trust: the fine-tuned model next to baselines, with intervals.

Before training, the untouched base model is evaluated on the same validation and test rows, with
the same tokenization, template and metrics as the fine-tuned model will be. A classifier's base has
a freshly initialised head (an untrained classifier), so the majority class is shown too; a
generating task's base is also prompted few-shot, with solved training rows before each prompt:
the alternative to fine-tuning. After training, every split is evaluated again; test metrics get
bootstrap confidence intervals, classifiers a confusion matrix, generating tasks text metrics on
their greedy answers. A classifier no better than always answering its commonest label is said to
be so (`against_majority`), never shown as a result. Everything lands in evaluation.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.components import TrainJob
from runner.components.rewards import REFERENCE
from runner.evaluation import rewarded
from runner.evaluation.majority import against_majority, majority_warning

FINAL_SPLITS = ("validation", "test")
# Prompts per call of a task's `generate` while answering: after each chunk the reporters hear how
# far it got. Two of the generating tasks' batches of 16 (which group prompts by length within it).
ANSWER_CHUNK = 32


class MetricsComputer:
    """`compute_metrics` for a trainer: task outputs -> metric components -> one dict. Keeps the
    last predictions and references, for intervals and the confusion matrix."""

    def __init__(self, task, metrics):
        self.task = task
        self.metrics = [m for m in metrics if not _text_only(m)]  # text metrics need generated answers
        self.last: tuple[Any, Any] | None = None

    def __call__(self, eval_prediction) -> dict[str, float]:
        predictions, references = self.task.metric_inputs(eval_prediction.predictions, eval_prediction.label_ids)
        self.last = (predictions, references)
        out: dict[str, float] = {}
        for metric in self.metrics:
            out.update(metric.compute(predictions, references))
        return out


def scores_only(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation's scores without its timings and epoch counter."""
    timing = ("runtime", "per_second", "preparation_time")
    return {k: v for k, v in result.items() if not k.endswith(timing) and k != "epoch"}


def _text_only(metric) -> bool:
    return metric.consumes == {"text"}


_PROBE = "The Quick Brown Fox"


def lowercasing(tokenizer) -> str | None:
    """Why `tokenizer` can write only lower-case text (its normalizer lowercases, or it is told
    `do_lower_case`), or None when it keeps case. A model that generates through it can never
    write a reference's capitals, so its answers are compared case-insensitively."""
    if getattr(tokenizer, "do_lower_case", False):
        return "the tokenizer lowercases (do_lower_case)"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        import json

        try:
            normalizer = json.loads(backend.to_str()).get("normalizer")
        except Exception:  # a backend that cannot be serialised: the round trip below decides
            normalizer = None
        if _lowercases(normalizer):
            return "the tokenizer lowercases"
    try:  # any other tokenizer: what comes back of a capitalised text
        back = tokenizer.decode(tokenizer.encode(_PROBE, add_special_tokens=False), skip_special_tokens=True)
    except Exception:
        return None
    return "the tokenizer lowercases" if " ".join(str(back).split()) == _PROBE.lower() else None


def _lowercases(normalizer) -> bool:
    """Whether a serialised `tokenizers` normalizer lowercases (Lowercase, or BertNormalizer's lowercase)."""
    if isinstance(normalizer, dict):
        if normalizer.get("type") == "Lowercase" or (
            normalizer.get("type") == "BertNormalizer" and normalizer.get("lowercase")
        ):
            return True
        return any(_lowercases(n) for n in normalizer.get("normalizers") or ())
    return False


@dataclass
class SplitRows:
    """One split's raw rows, per source with the source's task (for prompts), and its encoding."""

    parts: list[tuple[Any, Any]]  # [(task, datasets.Dataset)]
    encoded: Any


@dataclass
class Evaluator:
    """Evaluates models for a run; collects what evaluation.json says."""

    options: Any  # the recipe's [evaluation] (runner.recipe.resolved.EvaluationOptions)
    trainer: Any  # runner.Trainer
    task: Any
    tokenizer: Any
    max_length: int
    metrics: list  # runner.Metric, prepared
    collator: Any
    splits: dict[str, SplitRows]
    train_rows: Any  # the training split's raw rows (few-shot examples), or None
    seed: int
    events: Any
    checkpoint_dir: Any  # where the trainer may write (it writes nothing when only evaluating)
    train_labels: Any = None  # encoded training labels, for the majority-class baseline
    rewards: list = field(default_factory=list)  # runner.Reward, prepared: scores of the answers (trainer grpo)
    record: dict[str, Any] = field(default_factory=dict)  # intervals and details, for evaluation.json
    _case: Any = field(default=False, init=False, repr=False)  # lowercasing(tokenizer), once known
    # per split, the zero-shot prompts last answered and their rows (with the reference): what rewards score
    _asked: dict[str, tuple[list[str], list[dict]]] = field(default_factory=dict, init=False, repr=False)
    _base_answers: dict[str, Any] = field(default_factory=dict, init=False, repr=False)  # split -> (answers, table)

    def job(self, model) -> TrainJob:
        """A job that evaluates `model` (no DeepSpeed: a base model is evaluated unsharded)."""
        return TrainJob(
            model=model,
            tokenizer=self.tokenizer,
            task=self.task,
            train=None,
            evaluation=None,
            collator=self.collator,
            compute_metrics=MetricsComputer(self.task, self.metrics),
            checkpoint_dir=self.checkpoint_dir,
            seed=self.seed,
            events=None,
            rewards=self.rewards,
        )

    # -- one model on one split ----------------------------------------------------------------
    def scores(self, job: TrainJob, split: str) -> tuple[dict[str, float], tuple | None]:
        """Loss and metrics of `job.model` on `split` (timings left out), and the predictions they
        came from (`job.compute_metrics` is a MetricsComputer)."""
        result = self.trainer.evaluate(job, self.splits[split].encoded)
        return scores_only(result), job.compute_metrics.last

    def answers(
        self, model, split: str, shots: list[dict] | None = None, label: str = "answering"
    ) -> tuple[list[str], list[str]]:
        """Greedy answers of `model` to the first `generation_rows` prompts of `split`, and the
        references. Generation is the slow part of an evaluation: it is asked for in chunks of
        ANSWER_CHUNK prompts, and the reporters told after each one (`label`, e.g. "base model")."""
        limit = self.options.generation_rows
        work, asked = [], []
        for task, rows in self.splits[split].parts:
            take = rows.select(range(min(len(rows), limit - sum(len(p) for _, p in work))))
            if not len(take):
                break
            work.append((task, task.prompts(take, shots, tokenizer=self.tokenizer)))
            asked += [{REFERENCE: reference, **row} for row, (_, reference) in zip(take, work[-1][1], strict=True)]
        total, predictions, references = sum(len(pairs) for _, pairs in work), [], []
        what = f"{label}, {split}: answering"
        if self.events is not None:
            self.events.progress(what, 0, total)
        for task, pairs in work:
            for start in range(0, len(pairs), ANSWER_CHUNK):
                chunk = pairs[start : start + ANSWER_CHUNK]
                predictions += task.generate(model, self.tokenizer, [p for p, _ in chunk], self.max_length)
                references += [r for _, r in chunk]
                if self.events is not None:
                    self.events.progress(what, len(predictions), total)
        if not shots:
            self._asked[split] = ([p for _, pairs in work for p, _ in pairs], asked)
        return predictions, references

    def answer_scores(self, model, split: str) -> dict[str, float]:
        """The scores of `model`'s own greedy answers on `split`: the text metrics and the rewards
        (`finetune eval` of a finished run; a run's evaluation adds intervals and baselines itself)."""
        if not (self.text_metrics or self.rewards):
            return {}
        predictions, references = self.answers(model, split)
        out = self.text_scores(predictions, references) if self.text_metrics else {}
        return {**out, **(self._rewarded(split, predictions).summary() if self.rewards else {})}

    def comparable(self, predictions: list[str], references: list[str]) -> tuple[list[str], list[str]]:
        """Answers and references as the text metrics compare them: the way the model can write.
        A tokenizer that lowercases makes every answer lower-case, so both sides are lower-cased
        (else exact match would be 0 however right the answers are); evaluation.json's
        `comparison` and each text metric's entry in `notes` say so, and the run says it once."""
        if self._case is False:
            self._case = lowercasing(self.tokenizer) if self.tokenizer is not None else None
            if self._case:
                # the metrics that score these references (not one left out as meaningless here)
                keys = [m.key() for m in self.metrics if _text_only(m) and m.meaningless(references) is None]
                how = f"case-insensitive: {self._case}, so the model cannot write the references' capitals"
                self.record["comparison"] = {"case": "insensitive", "reason": self._case, "metrics": keys}
                self.record.setdefault("notes", {}).update({key: how for key in keys})
                if keys and self.events is not None:
                    self.events.info(f"{', '.join(keys)} compare answers lower-cased ({how.split(': ', 1)[1]})")
        if not self._case:
            return predictions, references
        return [str(p).lower() for p in predictions], [str(r).lower() for r in references]

    def text_scores(self, predictions: list[str], references: list[str]) -> dict[str, float]:
        predictions, references = self.comparable(predictions, references)
        out: dict[str, float] = {}
        for metric in self.metrics:
            if _text_only(metric) and self._meaningful(metric, references):
                out.update(metric.compute(predictions, references))
        return out

    def _meaningful(self, metric, references) -> bool:
        """False for a metric that says nothing on these references; evaluation.json's
        `left_out` says why, and the run says it once."""
        reason = metric.meaningless(references)
        if reason:
            left_out = self.record.setdefault("left_out", {})
            if metric.key() not in left_out and self.events is not None:
                self.events.info(f"{metric.key()} left out: {reason}")
            left_out[metric.key()] = reason
        return reason is None

    @property
    def text_metrics(self) -> bool:
        return self.task.generates and any(_text_only(m) for m in self.metrics)

    # -- baselines -----------------------------------------------------------------------------
    def baselines(self, base_model, random_init: bool, described: str | None = None) -> list[dict[str, Any]]:
        """Evaluate the untouched base model, and the references that need no model. `described`: what
        the base model is, where it is not a pretrained one (`Model.describe_base`)."""
        head_note = {
            "sequence_classification": "its classification head freshly initialised: an untrained classifier",
            "token_classification": "its tagging head freshly initialised: an untrained tagger",
        }.get(self.task.head)
        what = described or "the pretrained base model"
        if random_init:
            note = "the base model is randomly initialised (built from a config): it has learnt nothing yet"
        elif head_note:
            note = f"{what}, with {head_note}"
        else:
            note = f"{what}, prompted zero-shot" if self.task.generates else what
        base = {"name": "base model", "note": note}
        job = self.job(base_model)
        for split in self._final_splits():
            base[split], _ = self.scores(job, split)
            if self.text_metrics or self.rewards:
                answers = self.answers(base_model, split, label="base model")
                base[split].update(self.text_scores(*answers) if self.text_metrics else {})
                table = self._rewarded(split, answers[0], base=True) if self.rewards else None
                base[split].update(table.summary() if table else {})
                if table and split == "test" and self.options.bootstrap:  # is the tuned model's clear of these?
                    base.setdefault("intervals", {})[split] = self._reward_intervals(table)
        rows = [base]
        shots = self._shots()
        if shots and self.text_metrics:
            few = {
                "name": f"base model, {len(shots)}-shot",
                "note": f"{len(shots)} solved training rows before each prompt",
            }
            for split in self._final_splits():
                few[split] = self.text_scores(*self.answers(base_model, split, shots, few["name"]))
            rows.append(few)
        majority = self._majority()
        if majority:
            rows.append(majority)
        return rows

    def _final_splits(self) -> list[str]:
        return [s for s in FINAL_SPLITS if s in self.splits]

    def _shots(self) -> list[dict]:
        k = self.options.few_shot
        if not k or self.train_rows is None or not self.task.generates:
            return []
        import numpy as np

        order = np.random.default_rng(self.seed).permutation(len(self.train_rows))[:k]
        return [{c: v for c, v in self.train_rows[int(i)].items() if not c.startswith("_")} for i in order]

    def _majority(self) -> dict[str, Any] | None:
        """Always the most frequent training label: the score a classifier must beat to have learnt anything."""
        if self.task.produces != "classes" or self.train_labels is None:
            return None
        import numpy as np

        counts = np.bincount(np.asarray(self.train_labels), minlength=len(getattr(self.task, "labels", [])))
        top = int(counts.argmax())
        names = getattr(self.task, "labels", None)
        shown = names[top] if names else top
        row: dict[str, Any] = {
            "name": "majority class",
            "note": f"always predicts '{shown}', the most frequent training label",
        }
        for split in self._final_splits():
            references = np.asarray(self.splits[split].encoded["labels"])
            predictions = np.full_like(references, top)
            row[split] = {}
            for metric in self.metrics:
                if not _text_only(metric):
                    row[split].update(metric.compute(predictions, references))
        return row

    # -- the fine-tuned model ------------------------------------------------------------------
    def final(self, job: TrainJob, parts: dict[str, list[tuple[str, Any]]]) -> dict[str, Any]:
        """Evaluate the trained `job.model` on every split (and each source of a mixed split)."""
        from runner.evaluation.intervals import bootstrap

        final: dict[str, Any] = {}
        intervals: dict[str, Any] = {}
        details: dict[str, Any] = {}
        for split in self._final_splits():
            final[split], last = self.scores(job, split)
            answers = table = None
            if self.text_metrics or self.rewards:
                raw = self.answers(job.model, split, label="fine-tuned model")
                table = self._rewarded(split, raw[0]) if self.rewards else None
                final[split].update(table.summary() if table else {})
                answers = self.comparable(*raw) if self.text_metrics else None
                final[split].update(self.text_scores(*answers) if answers else {})
            self.events.evaluated(split, None, final[split], final=True)
            if last is not None:
                details[split] = self._details(*last)
            if split == "test" and self.options.bootstrap:
                intervals[split] = {}
                for metric in self.metrics:
                    data = answers if _text_only(metric) else last
                    if data is not None and metric.key() not in self.record.get("left_out", {}):
                        o = self.options
                        found = bootstrap(metric, *data, resamples=o.bootstrap, confidence=o.confidence, seed=self.seed)
                        intervals[split].update(found)
                if table is not None:
                    intervals[split].update(self._reward_intervals(table))
            for name, dataset in parts.get(split, []) if len(parts.get(split, [])) > 1 else ():
                final[f"{split}/{name}"] = scores_only(self.trainer.evaluate(job, dataset))
                self.events.evaluated(f"{split}/{name}", None, final[f"{split}/{name}"], final=True)
        self.record.update(intervals=intervals, details={k: v for k, v in details.items() if v})
        return final

    def _rewarded(self, split: str, answers: list[str], base: bool = False):
        """The rewards' scores of `answers` to the split's held-out prompts (runner/evaluation/rewarded.py);
        the fine-tuned model's, beside the base model's kept from before training, make the examples."""
        prompts, rows = self._asked[split]
        table = rewarded.RewardTable(self.rewards, prompts, answers, rows)
        if base:
            self._base_answers[split] = (answers, table)
        else:
            before, base_table = self._base_answers.get(split, (None, None))
            references = [row[REFERENCE] for row in rows]
            shown = rewarded.examples(prompts, references, before, answers, base_table, table)
            self.record.setdefault("reward_examples", {})[split] = shown
        return table

    def _reward_intervals(self, table) -> dict[str, Any]:
        o = self.options
        return rewarded.intervals(table, o.bootstrap, o.confidence, self.seed)

    def compare_with_majority(self, baselines: list[dict[str, Any]], final: dict[str, Any], best_metric: str) -> None:
        """Record whether the fine-tuned classifier beats the majority class (`against_majority`),
        and warn when it does not."""
        greater = {m.key(): m.greater_is_better for m in self.metrics}
        check = against_majority(baselines, final, self.record.get("intervals", {}), best_metric, greater)
        if check:
            self.record["against_majority"] = check
            warning = majority_warning(check)
            if warning and self.events is not None:
                self.events.warn(warning)

    def _details(self, predictions, references) -> dict[str, Any]:
        """Tables the metrics give beside their numbers (a confusion matrix), with label names."""
        out: dict[str, Any] = {}
        labels = getattr(self.task, "labels", None)
        for metric in self.metrics:
            out.update(metric.details(predictions, references, num_labels=len(labels) if labels else None))
        if labels and "confusion_matrix" in out:
            out["confusion_matrix"] = {**out["confusion_matrix"], "labels": list(labels)}
        return out
