"""Tokenizer `pretrained`: `AutoTokenizer` from a Hub id or a local directory."""

from __future__ import annotations

from pydantic import Field

from runner import HubOrPath, RunContext, Tokenizer, TokenizerOptions, hookimpl, hub_load_error


class PretrainedTokenizerOptions(TokenizerOptions):
    path: HubOrPath = Field(description="Hub id ('gpt2') or local directory of a saved tokenizer.")
    revision: str | None = Field(default=None, description="Branch, tag or commit on the Hub.")


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
            raise hub_load_error("tokenizer", o.path, exc) from exc


@hookimpl
def register_tokenizers(register):
    register(Pretrained)
