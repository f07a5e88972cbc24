"""What a new user sees first: a run's report.html in headless Chromium, as a PNG and as a measurement.

This is a check by eye, not a benchmark: it renders the report at a laptop's window size (1280x900 by
default) and saves a screenshot of the first screen, and it measures where the summary card ends, so
that one can see whether the answer (the summary card) is on the first screen. Run it with

    .venv/bin/python bench/report_screenshot.py runs/quickstart              # writes report.png there
    .venv/bin/python bench/report_screenshot.py runs/quickstart --out first-screen.png --width 1024

It needs a Chromium (Debian: `apt-get install chromium`; or chromium-headless-shell). The report
itself has no script (its Content-Security-Policy forbids one); to measure, a copy of the page, in a
temporary directory, has the policy removed and a one-line script that writes the card's bottom edge
into the DOM, which `--dump-dom` prints. The report in the run directory is never changed; it is
rebuilt first when missing (`--rebuild` rebuilds it anyway).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "headless_shell")
PROBE = (
    "<script>(function () {{ var card = document.getElementById({target!r}); var out = document.createElement('pre');"
    " out.id = 'probe-result'; out.textContent = card ? 'bottom=' + card.getBoundingClientRect().bottom"
    " + ';width=' + document.documentElement.clientWidth : 'missing'; document.body.appendChild(out); }})();</script>"
)


def find_chromium() -> str | None:
    """The path of a Chromium binary on PATH, or None."""
    return next((found for name in BINARIES if (found := shutil.which(name))), None)


def _chromium(binary: str, width: int, height: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            binary,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def screenshot(report: Path, out: Path, *, width: int = 1280, height: int = 900, binary: str | None = None) -> Path:
    """Save the first screen (`width` x `height`) of `report` as the PNG `out`."""
    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError("no chromium found (apt-get install chromium)")
    out = Path(out).resolve()
    done = _chromium(binary, width, height, f"--screenshot={out}", Path(report).resolve().as_uri())
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return out


def measure_bottom(
    report: Path, target: str = "summary", *, width: int = 1280, height: int = 900, binary: str | None = None
) -> float:
    """Where the element with id `target` ends, in CSS pixels from the top of the page, laid out at
    `width` x `height` (measured on a copy of the page, with a probe script)."""
    binary = binary or find_chromium()
    if binary is None:
        raise RuntimeError("no chromium found (apt-get install chromium)")
    html = Path(report).read_text(encoding="utf-8")
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    html = html.replace("</body>", PROBE.format(target=target) + "</body>")
    with tempfile.TemporaryDirectory(prefix="report-probe-") as tmp:
        copy = Path(tmp) / "probe.html"
        copy.write_text(html, encoding="utf-8")
        done = _chromium(binary, width, height, "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="probe-result">bottom=([-\d.e]+);width=(\d+)</pre>', done.stdout)
    if not found:
        raise RuntimeError(f"no measurement in chromium's DOM (exit {done.returncode}): {done.stderr[-2000:]}")
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (or a report.html)")
    parser.add_argument("--out", type=Path, help="the PNG to write (default: report.png beside report.html)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--rebuild", action="store_true", help="rebuild report.html from the run's records first")
    args = parser.parse_args(argv)
    report = args.run_dir if args.run_dir.suffix == ".html" else args.run_dir / "report.html"
    if args.rebuild or not report.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from runner.report.page import build_report

        report = build_report(report.parent)
    out = screenshot(report, args.out or report.with_name("report.png"), width=args.width, height=args.height)
    bottom = measure_bottom(report, width=args.width, height=args.height)
    where = "within" if bottom <= args.height else "below"
    print(f"screenshot: {out}")
    print(f"summary card ends at {bottom:.0f} px: {where} the first screen of {args.width}x{args.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
