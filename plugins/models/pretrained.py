"""Model `pretrained`: `AutoModelFor...` from a Hub id or local directory, safetensors only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from plugins.models._loading import Loading, LoadingOptions, check_kernel, check_loading, kernel, loading_kwargs
from runner import FinetuneError, HubOrPath, Model, ModelSpec, RunContext, auto_class, hookimpl, hub_load_error

DTYPES = Literal["float32", "bfloat16", "float16", "auto"]


class PretrainedModelOptions(LoadingOptions):
    path: HubOrPath = Field(description="Hub id ('gpt2', 'distilbert-base-uncased') or a local directory.")
    revision: str | None = Field(default=None, description="Branch, tag or commit on the Hub.")
    dtype: DTYPES = Field(
        default="float32", description="Weights dtype; mixed precision training keeps float32 master weights."
    )


class Pretrained(Loading, Model):
    """A pretrained model from the Hub or a local directory (safetensors weights only)."""

    name = "pretrained"
    Options = PretrainedModelOptions

    @classmethod
    def check(cls, options, recipe):
        yield from check_loading(options)

    def build(self, ctx: RunContext, spec: ModelSpec):
        o = self.options
        cls = auto_class(spec.head)
        local = Path(o.path)
        if local.is_dir() and not list(local.glob("*.safetensors")) and list(local.glob("*.bin")):
            raise self._pickled()
        try:
            # Pickled .bin weights can run code when loaded: only safetensors are accepted.
            model = cls.from_pretrained(
                o.path,
                revision=o.revision,
                use_safetensors=True,
                trust_remote_code=ctx.trust_remote_code,
                dtype=o.dtype,
                **loading_kwargs(o),
                **spec.config_overrides(),
            )
        except OSError as exc:
            if "safetensors" in str(exc) and ".bin" in str(exc):
                raise self._pickled() from exc
            raise hub_load_error("model", o.path, exc) from exc
        except ValueError as exc:
            raise hub_load_error("model", o.path, exc) from exc
        embeddings = model.get_input_embeddings()
        if embeddings is not None and spec.vocab_size > embeddings.num_embeddings:
            ctx.info(f"resizing token embeddings {embeddings.num_embeddings} -> {spec.vocab_size} (new tokens)")
            model.resize_token_embeddings(spec.vocab_size)
        return check_kernel(model, o)

    def _pickled(self) -> FinetuneError:
        return FinetuneError(
            f"model '{self.options.path}' has no safetensors weights; pickled weights are refused (they can run code)",
            hint="convert it to safetensors once, or pick a repository that ships model.safetensors",
        )

    def build_empty(self, ctx: RunContext, spec: ModelSpec):
        import torch
        from transformers import AutoConfig

        o = self.options
        try:
            config = AutoConfig.from_pretrained(o.path, revision=o.revision, trust_remote_code=ctx.trust_remote_code)
        except (OSError, ValueError) as exc:
            raise hub_load_error("model config", o.path, exc) from exc
        for key, value in spec.config_overrides().items():
            setattr(config, key, value)
        with torch.device("meta"):
            return auto_class(spec.head).from_config(config, attn_implementation=kernel(o))

    def base_reference(self) -> str | None:
        return self.options.path


@hookimpl
def register_models(register):
    register(Pretrained)
