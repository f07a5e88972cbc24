"""Audit `bias`: does the model treat a text differently when only its gendered words (or names) change?

Counterfactual audit. The recipe names term groups (`terms = "gender"`, a table of aligned lists, or a
`terms_file`); every evaluation row that mentions a term is rewritten into each group (she -> he,
Mary -> John) and the model is asked again:

- classifiers (task produces "classes"): the share of rows whose predicted label changes under some
  rewriting (`flip_rate`), and how far apart the predicted-label distributions of the rewritten
  texts are (`label_shift`, the largest total-variation distance between two groups);
- causal language models: the gap between the log-likelihoods per token of a row's versions
  (`likelihood_gap`, nats per token) and which group the model prefers;
- when the data has a `group` column: the largest difference between groups of accuracy
  (classifiers) or of log-perplexity (language models: nats per token) (`subgroup_gap`).

The base model is measured before training and the fine-tuned one after; thresholds judge the
fine-tuned figures and the summary compares them with the base's. Mitigations, applied to the
training rows: `reweight` (Kamiran & Calders: weight w(g, y) = P(g) P(y) / P(g, y), so that group and
label are independent in the weighted data) and `augment` (a counterfactual copy of every row that
mentions a term, rewritten into each other group, with the same label).
"""

from __future__ import annotations

import functools
import json
import random
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from plugins.audits._bias_measures import label_flips, likelihood_gaps, subgroup_gap
from plugins.audits._counterfactual import TermError, TermGroups
from runner import (
    GROUP_COLUMN,
    Audit,
    AuditData,
    AuditOptions,
    AuditResult,
    AuditSubject,
    FilePath,
    Fraction,
    NonNegativeFloat,
    RunContext,
    hookimpl,
)

TERMS_DIR = Path(__file__).parent / "bias_terms"
SHIPPED = sorted(p.stem for p in TERMS_DIR.glob("*.toml"))
EVAL_SPLITS = ("test", "validation")
# The columns of a row that are text a term can appear in (classification, language modelling,
# instruction tuning). A column that holds a conversation (a list of turns: openai `messages`,
# sharegpt `conversations`, or a column of another name) has its turns' TURN_TEXT keys rewritten.
TEXT_COLUMNS = ("text", "text_pair", "system", "instruction", "input", "output")
TURN_TEXT = ("content", "value")


class BiasOptions(AuditOptions):
    terms: str | dict[str, list[str]] = Field(
        default="gender",
        description=f"Term groups to swap: a shipped list ({', '.join(SHIPPED)}) or a table of aligned lists, "
        "e.g. { female = ['she', 'woman'], male = ['he', 'man'] } (the i-th terms are counterparts).",
    )
    terms_file: FilePath | None = Field(
        default=None,
        description="A .toml or .json file of term groups shaped like `terms` (instead of it), or with tables "
        "`groups` and `before_noun` as in the shipped plugins/audits/bias_terms/gender.toml.",
    )
    split: Literal["test", "validation"] = Field(
        default="test", description="The rows rewritten; the other evaluation split is used if it has none."
    )
    max_rows: int = Field(default=1000, gt=0, description="Audit at most this many rows (a seeded sample).")
    max_flip_rate: Fraction | None = Field(
        default=0.05,
        description="Classifiers: fail above this share of term rows whose label changes when the terms are swapped.",
    )
    max_label_shift: Fraction | None = Field(
        default=None,
        description="Classifiers: fail above this total-variation distance between the groups' predicted labels.",
    )
    max_likelihood_gap: NonNegativeFloat | None = Field(
        default=None,
        description="Language models: fail above this mean gap in log-likelihood per token (nats) between versions.",
    )
    max_subgroup_gap: NonNegativeFloat | None = Field(
        default=None,
        description="With a `group` column: fail above this gap between groups in accuracy (classifiers) "
        "or log-perplexity (language models).",
    )
    mitigation: list[Literal["reweight", "augment"]] = Field(
        default_factory=list,
        description="'reweight': weight training rows so that group and label are independent (classifiers); "
        "'augment': add a copy of each term row rewritten into every other group.",
    )
    examples: int = Field(default=10, ge=0, description="Rows kept as examples (flips, largest gaps).")

    @field_validator("terms")
    @classmethod
    def _terms(cls, value):
        if isinstance(value, str):
            if value not in SHIPPED:
                raise ValueError(f"unknown term list '{value}' (shipped: {', '.join(SHIPPED)}); or use terms_file")
        else:
            try:
                TermGroups.from_table(value)
            except TermError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("mitigation")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("each mitigation once")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if self.terms_file is not None and "terms" in self.model_fields_set:
            raise ValueError("set `terms` or `terms_file`, not both")
        return self


def read_terms(options: BiasOptions) -> TermGroups:
    """The term groups the options name; TermError says what is wrong with a file."""
    if options.terms_file is not None:
        path = Path(options.terms_file)
        try:
            raw = path.read_bytes()
            table = json.loads(raw) if path.suffix.lower() == ".json" else tomllib.loads(raw.decode("utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, TOMLDecodeError, JSONDecodeError
            raise TermError(f"{path.name}: cannot read term groups: {exc}") from None
        try:
            return TermGroups.from_table(table)
        except TermError as exc:
            raise TermError(f"{path.name}: {exc}") from None
    if isinstance(options.terms, str):
        return TermGroups.from_table(tomllib.loads((TERMS_DIR / f"{options.terms}.toml").read_text("utf-8")))
    return TermGroups.from_table(options.terms)


class Bias(Audit):
    """Counterfactual bias: label flips (classifiers) or likelihood gaps (LMs) when gendered terms are swapped."""

    name = "bias"
    Options = BiasOptions

    @functools.cached_property
    def terms(self) -> TermGroups:
        """The term groups, read on first use: the file is checked by `check`, not on construction."""
        return read_terms(self.options)

    @property
    def terms_label(self) -> str:
        if self.options.terms_file:
            return Path(self.options.terms_file).name
        return self.options.terms if isinstance(self.options.terms, str) else "/".join(self.options.terms)

    @classmethod
    def check(cls, options: BiasOptions, recipe):
        if options.terms_file is not None:
            try:
                read_terms(options)
            except TermError as exc:
                yield ("terms_file",), str(exc)
        task = recipe.task.cls
        classifier, lm = task.produces == "classes", task.head == "causal_lm"
        if not classifier and not lm:
            yield (
                ("type",),
                f"the bias audit measures classifiers and causal language models; task '{recipe.task.name}' "
                f"is neither ({task.produces}, {task.head})",
            )
            return
        wrong = ("max_flip_rate", "max_label_shift") if lm else ("max_likelihood_gap",)
        for key in wrong:
            if key in options.model_fields_set and getattr(options, key) is not None:
                kind = "classifiers" if lm else "language models"
                yield (key,), f"{key} applies to {kind}; task '{recipe.task.name}' is not one"
        if "reweight" in options.mitigation and not classifier:
            yield (
                ("mitigation",),
                f"reweight balances groups against labels: it needs a classification task, not '{recipe.task.name}'",
            )

    # -- measuring ----------------------------------------------------------------------------------
    def _split(self, data: AuditData) -> str | None:
        order = [self.options.split, *(s for s in EVAL_SPLITS if s != self.options.split)]
        return next((s for s in order if data.size(s)), None)

    def _sample(self, indices: list[int], ctx: RunContext) -> list[int]:
        """At most max_rows of `indices`, the same ones for the base and the fine-tuned model."""
        if len(indices) <= self.options.max_rows:
            return indices
        return sorted(random.Random(ctx.seed).sample(indices, self.options.max_rows))

    def measure(self, subject: AuditSubject, data: AuditData, ctx: RunContext) -> dict[str, Any] | None:
        split = self._split(data)
        if split is None:
            return {"split": None}
        texts = data.texts(split)
        term_rows = [i for i, t in enumerate(texts) if self.terms.find(t)]
        figures: dict[str, Any] = {
            "split": split,
            "terms": self.terms_label,
            "groups": self.terms.names,
            "rows": len(texts),
            "term_rows": len(term_rows),
        }
        chosen = self._sample(term_rows, ctx)
        figures["audited_rows"] = len(chosen)
        classifier = subject.task.produces == "classes"
        if chosen:
            versions = [self.terms.counterfactuals(texts[i]) for i in chosen]
            measured = label_flips if classifier else likelihood_gaps
            figures.update(
                measured(subject, data, split, texts, chosen, versions, self.terms.names, self.options.examples)
            )
        groups = data.column(split, GROUP_COLUMN)
        if groups is not None:
            grouped = self._sample([i for i, g in enumerate(groups) if g is not None and g != ""], ctx)
            if grouped:
                figures["subgroups"] = subgroup_gap(subject, data, split, texts, groups, grouped, classifier)
        return figures

    # -- judging ------------------------------------------------------------------------------------
    FIGURES = (  # (figure path, words in the summary, the option that limits it)
        ("flip_rate", "flip rate", "max_flip_rate"),
        ("label_shift", "label shift", "max_label_shift"),
        ("likelihood_gap", "likelihood gap per token", "max_likelihood_gap"),
        ("subgroups.gap", "subgroup gap", "max_subgroup_gap"),
    )

    @staticmethod
    def _get(figures: dict | None, path: str):
        node: Any = figures or {}
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, int | float) else None

    def judge(self, base: dict[str, Any] | None, finetuned: dict[str, Any]) -> AuditResult:
        def without_examples(f):
            return {k: v for k, v in f.items() if k != "examples"} if f is not None else None

        figures = {"base": without_examples(base), "finetuned": without_examples(finetuned)}
        examples = list(finetuned.get("examples", []))
        if finetuned.get("split") is None:
            return AuditResult(None, "no test or validation rows to audit", figures, {}, [])

        thresholds, verdicts, parts = {}, [], []
        for path, words, option in self.FIGURES:
            value = self._get(finetuned, path)
            if value is None:
                continue  # not measured for this kind of model, or no row to measure it on
            if path == "subgroups.gap":
                words = f"{words} in {finetuned['subgroups']['metric'].replace('_', '-')}"
            text = f"{words} {value:.3g}"
            before = self._get(base, path)
            if before is not None:
                text += f" (base {before:.3g})"
            limit = getattr(self.options, option)
            if limit is not None:
                thresholds[path.replace("subgroups.", "subgroup_")] = limit
                verdicts.append(value <= limit)
                text += f" within {limit:g}" if value <= limit else f" above {limit:g}"
            parts.append(text)
        if "preferred" in finetuned:
            parts.append(f"prefers {finetuned['preferred']}" + (f" (base {base['preferred']})" if base else ""))

        split = finetuned["split"]
        where = f"{split} split" + (f", no {self.options.split} split" if split != self.options.split else "")
        scope = f"{finetuned['term_rows']} of {finetuned['rows']} rows mention {self.terms_label} terms ({where})"
        if finetuned["audited_rows"] < finetuned["term_rows"]:
            scope += f", {finetuned['audited_rows']} audited"
        summary = f"{'; '.join(parts)}; {scope}" if parts else f"nothing to compare: {scope}"
        return AuditResult(all(verdicts) if verdicts else None, summary, figures, thresholds, examples)

    # -- mitigation ---------------------------------------------------------------------------------
    def _row_group(self, row: dict, task) -> Any:
        """The group a training row counts in: its `group` value, else the one term group it mentions
        (rows mentioning none or several form buckets of their own)."""
        if GROUP_COLUMN in row:
            return ("column", row[GROUP_COLUMN])
        found = self.terms.mentions(task.row_text(row))
        return ("terms", found[0]) if len(found) == 1 else ("terms:none" if not found else "terms:several", None)

    def reweight(self, train, task) -> list[float] | None:
        """Kamiran & Calders reweighing: w(g, y) = P(g) P(y) / P(g, y), mean 1."""
        if "reweight" not in self.options.mitigation:
            return None
        keys = [(self._row_group(row, task), row["label"]) for row in train]
        n = len(keys)
        if not n:
            return []
        by_group = Counter(g for g, _ in keys)
        by_label = Counter(y for _, y in keys)
        joint = Counter(keys)
        weights = [by_group[g] * by_label[y] / (n * joint[(g, y)]) for g, y in keys]
        mean = sum(weights) / n  # 1 up to rounding
        return [w / mean for w in weights]

    def _rewrite_row(self, row: dict, target: str) -> dict:
        out = dict(row)
        for column in TEXT_COLUMNS:
            if isinstance(row.get(column), str):
                out[column] = self.terms.rewrite(row[column], target)
        for column, turns in row.items():
            if isinstance(turns, list) and any(isinstance(turn, dict) for turn in turns):
                out[column] = [self._rewrite_turn(turn, target) for turn in turns]
        # A group column that names the term groups follows the rewriting; any other grouping stays.
        if row.get(GROUP_COLUMN) in self.terms.groups:
            out[GROUP_COLUMN] = target
        return out

    def _rewrite_turn(self, turn: Any, target: str) -> Any:
        if not isinstance(turn, dict):
            return turn
        return {
            k: self.terms.rewrite(v, target) if k in TURN_TEXT and isinstance(v, str) else v for k, v in turn.items()
        }

    @staticmethod
    def _text_key(row: dict) -> str:
        return json.dumps({c: v for c, v in sorted(row.items()) if c != GROUP_COLUMN}, default=str)

    def augment(self, train, task):
        """Counterfactual data augmentation: for each row that mentions a term, a copy rewritten into
        each group whose rewriting changes it (the other groups), same label. Only the new rows."""
        if "augment" not in self.options.mitigation:
            return None
        new = []
        for row in train:
            seen = {self._text_key(row)}  # a row without terms: every rewriting is the row itself
            for group in self.terms.names:
                copy = self._rewrite_row(row, group)
                key = self._text_key(copy)
                if key not in seen:
                    seen.add(key)
                    new.append(copy)
        if not new:
            return train.select([])
        from datasets import Dataset

        return Dataset.from_list(new, features=train.features)


@hookimpl
def register_audits(register):
    register(Bias)
