"""Tokenizer `run`: the tokenizer an earlier run saved with its final model (vocabulary, special
tokens and chat template), so that a recipe started from that run's model (`[model] type = "run"`)
reads text exactly as the run trained it to."""

from __future__ import annotations

from pydantic import Field

from plugins.models.from_run import check_run_path, find_run
from runner import RunContext, Tokenizer, TokenizerOptions, hookimpl, hub_load_error


class FromRunTokenizerOptions(TokenizerOptions):
    path: str = Field(
        min_length=1,
        description="A completed run directory (runs/<name>/<time>), or a folder of runs (runs/<name>): its newest "
        "completed run. Relative to the working directory, like run.output_dir.",
    )


class FromRun(Tokenizer):
    """The tokenizer saved with an earlier run's final model, its chat template included."""

    name = "run"
    Options = FromRunTokenizerOptions

    @classmethod
    def check(cls, options, recipe):
        yield from check_run_path(options.path)

    def build(self, ctx: RunContext, texts):
        from transformers import AutoTokenizer

        run = find_run(self.options.path)
        try:
            return AutoTokenizer.from_pretrained(run / "model")
        except Exception as exc:
            raise hub_load_error("tokenizer", str(run / "model"), exc) from exc


@hookimpl
def register_tokenizers(register):
    register(FromRun)
