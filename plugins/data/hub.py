"""Data source `hub`: a dataset from the Hugging Face Hub (or the local datasets cache)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner import DataError, DataSource, DataSourceOptions, RawSplit, RunContext, hookimpl, is_offline


class HubOptions(DataSourceOptions):
    path: str = Field(description="Dataset id on the Hub, e.g. 'mteb/tweet_sentiment_extraction'.")
    name: str | None = Field(default=None, description="The dataset's configuration name, if it has several.")
    revision: str | None = Field(default=None, description="A branch, tag or commit to pin the data to.")
    splits: dict[Literal["train", "validation", "test"], str] = Field(
        default_factory=dict,
        description="Which Hub split serves as ours, e.g. { validation = 'dev' }; by default the same names.",
    )


class Hub(DataSource):
    """A dataset from the Hugging Face Hub, by id."""

    name = "hub"
    Options = HubOptions
    fingerprint_downloads = True  # the fingerprint is the splits' own, read from the data

    def hub_datasets(self) -> list[tuple[str, str | None]]:
        return [(self.options.path, self.options.revision)]

    def _load(self):
        from datasets import load_dataset

        o = self.options
        try:
            return load_dataset(o.path, o.name, revision=o.revision)
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if is_offline():
                raise DataError(
                    f"cannot load Hub dataset '{o.path}': working offline and it is not in the local cache",
                    hint="run once with network access to cache it, or use a `files` source",
                ) from exc
            raise DataError(f"cannot load Hub dataset '{o.path}': {reason}") from exc

    def load(self, ctx: RunContext) -> dict[str, RawSplit]:
        data = self._load()
        self._fingerprints = {name: split._fingerprint for name, split in data.items()}
        wanted = {ours: self.options.splits.get(ours, ours) for ours in ("train", "validation", "test")}
        for ours, theirs in self.options.splits.items():
            if theirs not in data:
                raise DataError(
                    f"Hub dataset '{self.options.path}' has no split '{theirs}' (asked for as {ours})",
                    hint=f"its splits: {', '.join(data)}",
                )
        found = {ours: theirs for ours, theirs in wanted.items() if theirs in data}
        if "train" not in found:
            raise DataError(
                f"Hub dataset '{self.options.path}' has no 'train' split",
                hint=f"its splits: {', '.join(data)}; map one with splits = {{ train = '...' }}",
            )
        origin = f"hub:{self.options.path}"
        return {ours: RawSplit(data[theirs], f"{origin}[{theirs}]", "row", 1) for ours, theirs in found.items()}

    def fingerprint(self, ctx: RunContext) -> dict:
        fingerprints = getattr(self, "_fingerprints", None)
        if fingerprints is None:
            fingerprints = {name: split._fingerprint for name, split in self._load().items()}
        return {"hub": self.options.path, "revision": self.options.revision, "splits": fingerprints}


@hookimpl
def register_data_sources(register):
    register(Hub)
