"""Tokenizer `pretrained`: `AutoTokenizer` from a Hub id or a local directory."""

from __future__ import annotations

from pydantic import Field

from runner import FinetuneError, HubOrPath, RunContext, Tokenizer, TokenizerOptions, hookimpl


class PretrainedTokenizerOptions(TokenizerOptions):
    path: HubOrPath = Field(description="Hub id ('gpt2') or local directory of a saved tokenizer.")
    revision: str | None = Field(default=None, description="Branch, tag or commit on the Hub.")


def load_failure(what: str, path: str, exc: Exception) -> FinetuneError:
    from plugins.data_hub import offline

    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if offline():
        return FinetuneError(
            f"cannot load {what} '{path}': offline (HF_HUB_OFFLINE=1) and not in the local cache",
            hint="run once with network access to cache it, or point `path` at a local directory",
        )
    return FinetuneError(f"cannot load {what} '{path}': {reason}")


class Pretrained(Tokenizer):
    """A pretrained tokenizer: AutoTokenizer from a Hub id or local path."""

    name = "pretrained"
    Options = PretrainedTokenizerOptions

    def build(self, ctx: RunContext, texts):
        from transformers import AutoTokenizer

        o = self.options
        try:
            return AutoTokenizer.from_pretrained(o.path, revision=o.revision, trust_remote_code=ctx.trust_remote_code)
        except Exception as exc:
            raise load_failure("tokenizer", o.path, exc) from exc


@hookimpl
def register_tokenizers(register):
    register(Pretrained)
