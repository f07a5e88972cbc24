"""The audits section: each audit's verdict, summary, thresholds, figures and examples."""

from __future__ import annotations

from typing import Any

from runner.recipe.keys import key_paths
from runner.report.run_record import RunRecord, audit_entries
from runner.report.sections.pieces import audit_badge, cell, clip, kv_table, missing_note
from runner.report.values import esc

MAX_EXAMPLES = 10


def section_audits(rec: RunRecord) -> str:
    """Each audit's verdict, summary, thresholds, figures and examples: audits.json."""
    entries = audit_entries(rec)
    if entries is None:
        return missing_note(
            "not recorded: no audits.json (a run from before audits existed, or one that stopped early)."
        )
    if not entries:
        return missing_note("no audits were configured for this run.")
    passed = sum(1 for a in entries if a.get("passed") is True)
    failed = sum(1 for a in entries if a.get("passed") is False)
    other = len(entries) - passed - failed
    noun = "audit" if len(entries) == 1 else "audits"
    out = [f"<p>{len(entries)} {noun}: {passed} passed, {failed} failed, {other} informational.</p>"]
    for a in entries:
        kind = (
            f' <span class="note">({esc(a["type"])})</span>' if a.get("type") and a.get("type") != a.get("name") else ""
        )
        out.append(
            f'<div class="audit"><h3>{audit_badge(a.get("passed"))} {esc(a.get("name", "audit"))}{kind}</h3>'
            f"<p>{esc(a.get('summary') or '')}</p>"
        )
        thresholds = a.get("thresholds")
        if isinstance(thresholds, dict) and thresholds:
            out.append(
                "<h4>thresholds</h4>" + kv_table((k, esc(clip(v, 120))) for k, v in key_paths(thresholds).items())
            )
        out.append(_figures(a.get("figures")))
        out.append(_examples(a.get("examples")))
        out.append("</div>")
    return "".join(out)


def _figures(figures: Any) -> str:
    if not isinstance(figures, dict) or not figures:
        return ""
    base, tuned = figures.get("base"), figures.get("finetuned")
    if isinstance(tuned, dict) and (base is None or isinstance(base, dict)):
        b, t = key_paths(base or {}), key_paths(tuned)
        keys = list(dict.fromkeys([*b, *t]))
        body = "".join(f"<tr><th>{esc(k)}</th>{cell(b.get(k, '—'))}{cell(t.get(k, '—'))}</tr>" for k in keys)
        return (
            '<h4>figures</h4><table><thead><tr><th></th><th class="num">base model</th>'
            f'<th class="num">fine-tuned</th></tr></thead><tbody>{body}</tbody></table>'
        )
    if all(isinstance(v, dict) and v and not any(isinstance(x, dict) for x in v.values()) for v in figures.values()):
        # one row per part (e.g. per split), one column per figure
        columns = list(dict.fromkeys(k for v in figures.values() for k in v))
        head = "".join(f'<th class="num">{esc(c)}</th>' for c in columns)
        body = "".join(
            f"<tr><th>{esc(k)}</th>" + "".join(cell(v.get(c, "—")) for c in columns) + "</tr>"
            for k, v in figures.items()
        )
        return f"<h4>figures</h4><table><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>"
    body = "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in key_paths(figures).items())
    return f'<h4>figures</h4><table class="kv">{body}</table>'


def _examples(examples: Any) -> str:
    if not isinstance(examples, list) or not examples:
        return ""
    rows = [e if isinstance(e, dict) else {"example": e} for e in examples[:MAX_EXAMPLES]]
    columns = list(dict.fromkeys(k for r in rows for k in r))[:8]
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(r.get(c, "")) for c in columns) + "</tr>" for r in rows)
    more = f'<p class="note">and {len(examples) - MAX_EXAMPLES} more</p>' if len(examples) > MAX_EXAMPLES else ""
    return f'<h4>examples</h4><table class="examples"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'
