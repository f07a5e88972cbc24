"""The commands on finished runs: `eval`, `predict`, `generate`, `export`, `audit`, `report`, `compare`.

Each opens the run directory through the front door (runner/running) and prints what it returns.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runner.cli.console import console
from runner.errors import FinetuneError
from runner.running.finished import open_run
from runner.running.recipes import go_offline


def cmd_eval(args) -> int:
    from rich.table import Table

    from runner.running.saved import evaluate_run

    done = open_run(args.run_dir)
    go_offline()
    found = evaluate_run(done.run_dir, args.split, debug=args.debug)
    table = Table(title=f"{found.name}: {args.split} ({found.rows} rows)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in found.metrics.items():
        if key.endswith(("runtime", "per_second", "preparation_time")) or key == "epoch":
            continue  # timings are in the saved file; the table is for the scores
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console().print(table)
    return 0


def _read_inputs(path: Path) -> list[str]:
    if not path.is_file():
        raise FinetuneError(f"--input {path}: no such file")
    texts = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FinetuneError(f"{path}:{n}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise FinetuneError(f"{path}:{n}: expected an object with a 'text' string")
            texts.append(row["text"])
    else:
        texts = [line for line in lines if line.strip()]
    return texts


def cmd_predict(args) -> int:
    texts = args.text if args.text else _read_inputs(args.input)
    done = open_run(args.run_dir)
    go_offline()
    rows = done.predict(texts, debug=args.debug)
    lines = [json.dumps({"text": t, **row}, ensure_ascii=False) + "\n" for t, row in zip(texts, rows, strict=True)]
    if args.output:
        args.output.write_text("".join(lines), encoding="utf-8")
    else:
        sys.stdout.writelines(lines)
    return 0


def cmd_generate(args) -> int:
    done = open_run(args.run_dir)
    go_offline()
    for row in done.generate(args.prompt, max_new_tokens=args.max_new_tokens, debug=args.debug):
        answer = row.get("response", row.get("completion", ""))
        print(f"prompt: {row['prompt']}\nresponse: {answer}")
    return 0


def cmd_export(args) -> int:
    done = open_run(args.run_dir)
    go_offline()
    written = done.export(merge=args.merge, output=args.output, debug=args.debug)
    print(f"{'merged model' if args.merge else 'model'} written to {written}")
    return 0


def cmd_audit(args) -> int:
    from runner.running.reaudit import audit_run

    done = open_run(args.run_dir)
    go_offline()
    failed = audit_run(done.run_dir, args.audits, debug=args.debug)
    if failed:
        print(f"failed audits: {', '.join(failed)} (see audits.json)", file=sys.stderr)
        return 3
    return 0


def cmd_report(args) -> int:
    from runner.report.model_card import write_model_card
    from runner.report.page import build_report

    done = open_run(args.run_dir)
    print(build_report(done.path))
    if done.model_dir is not None:
        write_model_card(done.path, done.model_dir)
        print(done.model_dir / "README.md")
    return 0


def cmd_compare(args) -> int:
    from runner.report.compare import compare_runs, render_comparison

    result = compare_runs(args.run_dirs)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        render_comparison(result, console())
    return 0
