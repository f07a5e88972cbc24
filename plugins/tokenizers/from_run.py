"""Tokenizer `run`: the tokenizer an earlier run saved with its final model (vocabulary, special
tokens and chat template), so that a recipe started from that run's model (`[model] type = "run"`)
reads text exactly as the run trained it to."""

from __future__ import annotations

from pydantic import Field

from plugins.models.from_run import PATH_HELP, check_run_path, chosen_run
from runner import RunContext, Tokenizer, TokenizerOptions, hookimpl, hub_load_error


class FromRunTokenizerOptions(TokenizerOptions):
    path: str = Field(min_length=1, description=PATH_HELP)


class FromRun(Tokenizer):
    """The tokenizer saved with an earlier run's final model, its chat template included."""

    name = "run"
    Options = FromRunTokenizerOptions

    @classmethod
    def check(cls, options, recipe):
        yield from check_run_path(options.path)

    def build(self, ctx: RunContext, texts):
        from transformers import AutoTokenizer

        run = chosen_run(self.options.path, ctx.run_dir)  # the run the model starts from, on a resume too
        try:
            return AutoTokenizer.from_pretrained(run / "model")
        except Exception as exc:
            raise hub_load_error("tokenizer", str(run / "model"), exc) from exc


@hookimpl
def register_tokenizers(register):
    register(FromRun)
