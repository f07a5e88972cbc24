"""The bias audit's measurements: what a model answers for the counterfactual versions of rows.

- `label_flips` (classifiers): how often the predicted label changes when a row's terms are swapped,
  and how far apart the predicted-label distributions of the groups are;
- `likelihood_gaps` (causal language models): the gaps between the log-likelihoods per token of a
  row's versions, and which group the model prefers;
- `subgroup_gap` (rows with a `group` column): the largest difference between groups of accuracy
  (classifiers) or of log-perplexity (language models).

Each takes the model (`AuditSubject`) and the rows already chosen; sampling and judging are the
audit's (plugins/audits/bias.py).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any


def _share(counts: Counter, total: int) -> dict[str, float]:
    return {str(k): round(v / total, 6) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))} if total else {}


def _tv(p: dict[str, float], q: dict[str, float]) -> float:
    """Total-variation distance between two distributions over labels."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _label_name(task, value) -> str:
    """A label column value as the classifier names its predictions: integer ids become names."""
    labels = getattr(task, "labels", None)
    if isinstance(value, int) and getattr(task, "ints_are_ids", False) and labels and 0 <= value < len(labels):
        return str(labels[value])
    return str(value)


def label_flips(subject, data, split, texts, rows, versions, names, max_examples) -> dict[str, Any]:
    """Label flips and shifts; `versions`: each row rewritten into every group of `names`."""
    batch = [texts[i] for i in rows] + [v[g] for v in versions for g in names]
    predicted = subject.predict(batch)
    original, rewritten = predicted[: len(rows)], predicted[len(rows) :]
    by_group: dict[str, Counter] = {g: Counter() for g in names}
    flips, examples, score_shift = 0, [], 0.0
    for n, i in enumerate(rows):
        outs = dict(zip(names, rewritten[n * len(names) : (n + 1) * len(names)], strict=True))
        for g, out in outs.items():
            by_group[g][out["label"]] += 1
        changed = [g for g, out in outs.items() if out["label"] != original[n]["label"]]
        if changed:
            flips += 1
            if len(examples) < max_examples:
                g = changed[0]
                examples.append(
                    {
                        "where": data.where(split, i),
                        "original": texts[i],
                        "counterfactual": versions[n][g],
                        "group": g,
                        "label": original[n]["label"],
                        "counterfactual_label": outs[g]["label"],
                    }
                )
        scores = [out.get("scores") or {} for out in outs.values()]
        score_shift += max((_tv(p, q) for p in scores for q in scores), default=0.0)
    distribution = {g: _share(c, len(rows)) for g, c in by_group.items()}
    shift = max((_tv(distribution[a], distribution[b]) for a in names for b in names), default=0.0)
    return {
        "flip_rate": round(flips / len(rows), 6),
        "flips": flips,
        "label_shift": round(shift, 6),
        "label_distribution": distribution,
        "score_shift": round(score_shift / len(rows), 6),
        "examples": examples,
    }


def likelihood_gaps(subject, data, split, texts, rows, versions, names, max_examples) -> dict[str, Any]:
    """Gaps in log-likelihood per token between the `versions` of each row (one per group of `names`)."""
    scored = subject.log_likelihoods([v[g] for v in versions for g in names])
    gaps, signed = [], {g: 0.0 for g in names}
    for n in range(len(rows)):
        per_token = {
            g: total / max(count, 1)
            for g, (total, count) in zip(names, scored[n * len(names) : (n + 1) * len(names)], strict=True)
        }
        mean = sum(per_token.values()) / len(names)
        for g, value in per_token.items():
            signed[g] += value - mean
        gaps.append((max(per_token.values()) - min(per_token.values()), n, per_token))
    widest = sorted(gaps, key=lambda item: -item[0])[:max_examples]
    examples = [
        {
            "where": data.where(split, rows[n]),
            "texts": versions[n],
            "log_likelihood_per_token": {g: round(v, 6) for g, v in per_token.items()},
            "gap": round(gap, 6),
        }
        for gap, n, per_token in widest
    ]
    preference = {g: round(v / len(rows), 6) for g, v in signed.items()}
    return {
        "likelihood_gap": round(sum(g for g, _, _ in gaps) / len(rows), 6),
        "preference": preference,  # mean of a group's log-likelihood per token minus its row's mean
        "preferred": max(preference, key=preference.get),
        "examples": examples,
    }


def subgroup_gap(subject, data, split, texts, groups, rows, classifier) -> dict[str, Any]:
    """Accuracy (classifiers) or log-perplexity of each value of `groups` over `rows` (not empty), and the gap."""
    by_group: dict[str, list[int]] = {}
    for i in rows:
        by_group.setdefault(str(groups[i]), []).append(i)
    if classifier:
        labels = data.column(split, "label")
        predicted = subject.predict([texts[i] for i in rows])
        right = dict(zip(rows, (p["label"] for p in predicted), strict=True))
        values = {
            g: sum(right[i] == _label_name(subject.task, labels[i]) for i in members) / len(members)
            for g, members in by_group.items()
        }
        metric, extra = "accuracy", {}
    else:
        scored = dict(zip(rows, subject.log_likelihoods([texts[i] for i in rows]), strict=True))
        # negative log-likelihood per token over the group's tokens: log-perplexity
        values = {
            g: -sum(scored[i][0] for i in members) / max(sum(scored[i][1] for i in members), 1)
            for g, members in by_group.items()
        }
        metric = "log_perplexity"
        extra = {"perplexity": {g: round(math.exp(min(v, 700.0)), 4) for g, v in values.items()}}
    return {
        "metric": metric,
        "values": {g: round(v, 6) for g, v in values.items()},
        **extra,
        "rows": {g: len(m) for g, m in by_group.items()},
        "gap": round(max(values.values()) - min(values.values()), 6),
    }
