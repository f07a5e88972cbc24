"""Data source `files`: local csv, json, jsonl, parquet and txt files, read with `datasets`."""

from __future__ import annotations

import codecs
import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from runner import DataError, DataSource, DataSourceOptions, FilePath, RawSplit, RunContext, clip, hookimpl, sha256_file

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
    ".txt": "txt",
}


class FilesOptions(DataSourceOptions):
    path: FilePath | None = Field(default=None, description="One file of unsplit rows (split by data.split).")
    train: FilePath | None = Field(default=None, description="The training rows.")
    validation: FilePath | None = Field(default=None, description="Validation rows (else carved from train).")
    test: FilePath | None = Field(default=None, description="Test rows (else carved from train).")
    format: Literal["auto", "csv", "json", "jsonl", "parquet", "txt"] = Field(
        default="auto", description="File format; 'auto' goes by the file extension."
    )
    delimiter: str | None = Field(default=None, description="CSV delimiter (default ',' and tab for .tsv).")
    sample_by: Literal["line", "paragraph", "document"] = Field(
        default="line", description="txt files: one row per line, per blank-line paragraph, or per file."
    )

    @model_validator(mode="after")
    def _one_layout(self):
        if self.path is None and self.train is None:
            raise ValueError("give `path` (one unsplit file) or `train` (and optionally validation, test)")
        if self.path is not None and any(x is not None for x in (self.train, self.validation, self.test)):
            raise ValueError("give either `path` or train/validation/test files, not both")
        return self


def _format_of(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: cannot tell the format from '{suffix}'; set format = \"csv\" (or json, ...)")
    return FORMATS[suffix]


def check_utf8(path: Path) -> None:
    """Fail with the line number of the first byte sequence that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                bad = exc.start
                line += block[:bad].count(b"\n")
                raise DataError(
                    f"{path}: line {line} is not valid UTF-8 (byte {offset + bad})",
                    hint="re-save the file as UTF-8",
                ) from None
            line += block.count(b"\n")
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(f"{path}: ends in the middle of a UTF-8 character (line {line})") from None


def _has_rows(file: Path, fmt: str) -> bool:
    """Whether a text file holds anything beyond a CSV header (datasets fails obscurely otherwise)."""
    with open(file, encoding="utf-8") as f:
        lines = (line for line in f if line.strip())
        if fmt == "csv":
            next(lines, None)
        return next(lines, None) is not None


def read_file(path: str, fmt: str, options: FilesOptions) -> RawSplit:
    from datasets import Dataset

    file = Path(path)
    if fmt != "parquet":
        check_utf8(file)
        if not _has_rows(file, fmt):
            raise DataError(f"{path}: no rows")
    # datasets logs its own traceback before raising; the DataError below says it in one line
    datasets_log = logging.getLogger("datasets")
    level = datasets_log.level
    datasets_log.setLevel(logging.CRITICAL)
    try:
        if fmt == "csv":
            delimiter = options.delimiter or ("\t" if file.suffix.lower() == ".tsv" else ",")
            ds = Dataset.from_csv(path, sep=delimiter, keep_in_memory=True)
            return RawSplit(ds, path, "line", 2)
        if fmt in ("json", "jsonl"):
            ds = Dataset.from_json(path, keep_in_memory=True)
            return RawSplit(ds, path, "line" if fmt == "jsonl" else "row", 1)
        if fmt == "parquet":
            return RawSplit(Dataset.from_parquet(path, keep_in_memory=True), path, "row", 1)
        ds = Dataset.from_text(path, sample_by=options.sample_by, keep_in_memory=True)
        return RawSplit(ds, path, "line" if options.sample_by == "line" else "row", 1)
    except DataError:
        raise
    except Exception as exc:  # pyarrow and pandas parse errors, with their own detail
        bad = _bad_json_line(file, fmt) if fmt in ("json", "jsonl") else None
        if bad is not None:
            line, problem = bad
            hint = f"each line of a {fmt} file is one JSON object"
            raise DataError(f"{path}: cannot read it as {fmt}: line {line} is {problem}", hint=hint) from exc
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read it as {fmt}: {clip(detail)}") from exc
    finally:
        datasets_log.setLevel(level)


def _bad_json_line(file: Path, fmt: str) -> tuple[int, str] | None:
    """The first line of a JSON Lines file that is not a JSON object, and what it is instead.

    Asked only after `datasets` failed, whose own message names no line. A .json file that is one
    JSON document is judged whole."""
    text = file.read_text(encoding="utf-8")
    if fmt == "json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # not several documents, one per line: one broken document
                return exc.lineno, f"not valid JSON ({exc.msg}, column {exc.colno})"
        except RecursionError:
            return 1, "nested too deeply"
        else:
            return None if isinstance(whole, dict | list) else (1, "not a JSON object or array of objects")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return n, f"not valid JSON ({exc.msg}, column {exc.colno})"
        except RecursionError:
            return n, "nested too deeply"
        if not isinstance(row, dict):
            return n, f"not a JSON object (a {type(row).__name__})"
    return None


class Files(DataSource):
    """Local files: csv, tsv, json, jsonl, parquet or txt."""

    name = "files"
    Options = FilesOptions

    def _files(self) -> dict[str, str]:
        o = self.options
        if o.path is not None:
            return {"all": o.path}
        return {k: v for k, v in (("train", o.train), ("validation", o.validation), ("test", o.test)) if v}

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        return {
            split: read_file(path, _format_of(path, self.options.format), self.options)
            for split, path in self._files().items()
        }

    def fingerprint(self, ctx: RunContext) -> dict:
        return {"files": {path: sha256_file(path) for path in self._files().values()}}


@hookimpl
def register_data_sources(register):
    register(Files)
