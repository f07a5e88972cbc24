"""What ran, and where: the recipe and provenance section (the resolved recipe, its hash, the
components, the data sources and their fingerprints) and the environment section.
"""

from __future__ import annotations

import json
from typing import Any

from runner.recipe.keys import key_paths
from runner.report.run_record import RunRecord, describe_source, parameters, source_fingerprints
from runner.report.sections.pieces import clip, kv_table, missing_note
from runner.report.values import esc, fmt


def component(table: dict[str, Any], *keys: str) -> str:
    """A recipe component: its type, then the options named by `keys` that it sets (escaped HTML)."""
    kind = table.get("type", "—")
    details = [f"{k}={clip(table[k], 60)}" for k in keys if table.get(k) not in (None, "", [], {})]
    return esc(kind) + (f' <span class="note">{esc(", ".join(details))}</span>' if details else "")


def section_recipe(rec: RunRecord) -> str:
    """The resolved recipe, its hash, the components, the data sources and their fingerprints."""
    if rec.recipe_text is None:
        return missing_note("not recorded: recipe.resolved.toml is missing.")
    env = rec.environment or {}
    actual = rec.recipe_sha256  # set with recipe_text
    recorded = env.get("recipe_sha256")
    sha = f"<code>{esc(recorded or actual)}</code>"
    if recorded and recorded != actual:
        sha += (
            f' <span class="worse">the file changed since the run started (now <code>{esc(actual[:12])}…</code>)</span>'
        )
    elif not recorded:
        sha += ' <span class="note">(of the file now; the run recorded none)</span>'
    model = rec.section("model")
    rows = [
        ("recipe sha256", sha),
        ("task", component(rec.section("task"))),
        ("model", component(model, "path", "architecture", "revision")),
        ("strategy", component(rec.section("strategy"), "r", "alpha", "target_modules")),
        ("trainer", component(rec.section("training"), "learning_rate", "batch_size", "epochs", "max_steps")),
        ("seed", esc(fmt(rec.seed))),
    ]
    out = [kv_table(rows), "<h3>Data sources and fingerprints</h3>"]
    pairs = source_fingerprints(rec)
    if not pairs:
        out.append(missing_note("not recorded"))
    else:
        out.append("<table><thead><tr><th>#</th><th>source</th><th>fingerprint</th></tr></thead><tbody>")
        for i, (src, fp) in enumerate(pairs):
            if fp is None:
                shown = '<span class="missing">not recorded</span>'
            else:
                flat = key_paths({k: v for k, v in fp.items() if k != "source"})
                leaves = [(k, v) for k, v in flat.items() if v not in (None, {}, [], "")]
                shown = "<br>".join(
                    f'<code>{esc(k)}</code>: <span class="mono">{esc(clip(v, 90))}</span>' for k, v in leaves
                )
            name = describe_source(src) if src else (fp or {}).get("source")
            out.append(f"<tr><td>{i}</td><td>{esc(name)}</td><td>{shown}</td></tr>")
        out.append("</tbody></table>")
    out.append(
        '<details class="recipe"><summary>the resolved recipe (recipe.resolved.toml)</summary>'
        f"<pre>{esc(rec.recipe_text)}</pre></details>"
    )
    return "".join(out)


def _device(device: Any) -> str:
    if not isinstance(device, dict):
        return str(device) if device else "not recorded"
    if device.get("gpus"):
        gpus = device["gpus"]
        names = {g: gpus.count(g) for g in gpus}
        text = ", ".join(f"{n} × {g}" for g, n in names.items())
        return f"CUDA: {text}" + (" (bf16)" if device.get("bf16") else "")
    return "CPU" if device.get("cuda") is False else json.dumps(device)


def section_environment(rec: RunRecord) -> str:
    """Versions, device, threads, world size, git commit: environment.json."""
    env = rec.environment
    if env is None:
        return missing_note("not recorded: environment.json is missing (the run stopped before training began).")
    packages = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    device = env.get("device")
    threads = env.get("torch_threads", device.get("threads") if isinstance(device, dict) else None)
    git = env.get("git")
    if isinstance(git, dict) and git.get("commit"):
        git_text = f"<code>{esc(git['commit'])}</code>" + (" (with uncommitted changes)" if git.get("dirty") else "")
    else:
        git_text = '<span class="note">not a git repository</span>'
    distributed = env.get("distributed") if isinstance(env.get("distributed"), dict) else {}
    params = parameters(rec)
    rows = [
        ("python", esc(env.get("python", "—"))),
        *((name, esc(packages.get(name) or "not installed")) for name in ("torch", "transformers", "peft")),
        ("datasets, tokenizers", esc(f"{packages.get('datasets') or '—'}, {packages.get('tokenizers') or '—'}")),
        ("device", esc(_device(device))),
        ("threads", esc(fmt(threads))),
        (
            "world size",
            esc(fmt(env.get("world_size", 1)))
            + (f" ({esc(distributed['engine'])})" if distributed.get("engine") else ""),
        ),
        ("platform", esc(env.get("platform", "—"))),
        ("finetune-runner", esc(env.get("runner", "—"))),
        ("git", git_text),
        ("max length", esc(fmt(env.get("max_length")))),
        ("parameters", esc(_parameter_text(params)) if params else "—"),
    ]
    if env.get("command"):
        rows.append(("command", f"<code>{esc(' '.join(map(str, env['command'])))}</code>"))
    out = [kv_table(rows)]
    plugins = env.get("plugins")
    if isinstance(plugins, dict) and plugins:
        body = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in plugins.items())
        out.append(f"<details><summary>plugins ({len(plugins)})</summary><table>{body}</table></details>")
    return "".join(out)


def _parameter_text(params: dict[str, Any]) -> str:
    total, trainable = params.get("total"), params.get("trainable")
    if isinstance(total, int) and isinstance(trainable, int) and total:
        return f"{trainable:,} trainable of {total:,} ({trainable / total:.2%})"
    return ", ".join(f"{k} {fmt(v)}" for k, v in params.items())
