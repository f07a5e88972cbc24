"""Model `config`: an architecture built from a config with random weights (no download).

The config keys are the architecture's own (`n_layer`, `n_embd` for GPT-2; `num_hidden_layers`,
`hidden_size` for BERT/Llama). transformers silently accepts unknown config keys; this component
does not: a misspelt key is an error with a suggestion.
"""

from __future__ import annotations

import difflib
import tempfile

from pydantic import Field

from plugins.models._config_checks import built_problems, static_problems
from plugins.models._loading import Loading, LoadingOptions, check_kernel, check_loading, kernel, loading_kwargs
from plugins.models._transformers_static import architectures, config_fields
from runner import FinetuneError, Model, ModelSpec, RunContext, auto_class, clip, hookimpl

# Set from the tokenizer and the task; a recipe that sets them would contradict the data.
DERIVED = {"vocab_size", "num_labels", "id2label", "label2id", "pad_token_id", "problem_type"}
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")
# How modeling code refuses a config value (not: out of memory, which is no fault of the values).
REFUSALS = (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError, AssertionError, IndexError)


class ConfigModelOptions(LoadingOptions):
    architecture: str = Field(description="A transformers model type: 'gpt2', 'bert', 'llama', 'distilbert', ...")
    config: dict[str, int | float | str | bool | list[int] | list[str]] = Field(
        default_factory=dict, description="Config values, e.g. { n_layer = 2, n_embd = 64, n_head = 2 }."
    )


class FromConfig(Loading, Model):
    """An architecture from a config, randomly initialised (seeded): offline and tiny if you like."""

    name = "config"
    Options = ConfigModelOptions

    @classmethod
    def check(cls, options, recipe):
        yield from check_loading(options)
        known = architectures()
        if known is not None and options.architecture not in known:
            close = difflib.get_close_matches(options.architecture, list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            yield ("architecture",), f"unknown architecture '{options.architecture}'{hint}"
            return
        fields = config_fields(options.architecture)
        if fields is None:
            return
        for key in options.config:
            if key in DERIVED:
                yield ("config", key), f"'{key}' is set from the tokenizer and the task; remove it"
            elif key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                yield ("config", key), f"'{options.architecture}' configs have no key '{key}'{hint}"
        problems = list(static_problems(options.architecture, options.config, fields))
        yield from problems
        if problems:
            return
        limit = cls(options).max_positions()
        max_length = recipe.tokenizer.options.max_length
        extra = recipe.strategy.create().extra_positions()
        if limit is not None and max_length is not None and max_length + extra > limit:
            also = f" plus {extra} virtual tokens of the strategy" if extra else ""
            key = next((k for k in POSITION_KEYS if k in fields), "n_positions")
            message = f"tokenizer.max_length = {max_length}{also} exceeds the model's {limit} positions"
            yield (), f"{message}; raise config.{key} or lower max_length"

    @classmethod
    def check_build(cls, options, recipe):
        """The architecture's own verdict on the config: the model built on the meta device (no
        weights). Needs torch, so `finetune run` and `plan` call it, not `validate`."""
        yield from built_problems(options.architecture, options.config)

    def architecture(self) -> str | None:
        return self.options.architecture

    def max_positions(self) -> int | None:
        for key in POSITION_KEYS:
            if key in self.options.config:
                return int(self.options.config[key])
        fields = config_fields(self.options.architecture) or {}
        for key in POSITION_KEYS:
            if isinstance(fields.get(key), int):
                return fields[key]
        return None

    def build_config(self, spec: ModelSpec):
        from transformers import AutoConfig

        o = self.options
        config_cls = type(AutoConfig.for_model(o.architecture))
        known = set(config_cls().to_dict()) | set(config_cls.attribute_map)
        unknown = [k for k in o.config if k not in known]
        if unknown:
            raise FinetuneError(f"model.config: '{o.architecture}' configs have no key '{unknown[0]}'")
        values = {**o.config, "vocab_size": spec.vocab_size, **spec.config_overrides()}
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(spec, name) is not None:
                values[name] = getattr(spec, name)
        try:
            return AutoConfig.for_model(o.architecture, **values)
        except REFUSALS as exc:  # a value the config class refuses (a dtype that is no torch type, ...)
            raise self._refused(exc) from exc

    def build(self, ctx: RunContext, spec: ModelSpec):
        config = self.build_config(spec)
        cls = auto_class(spec.head)
        try:
            model = self._from_config(cls, config)
        except REFUSALS as exc:  # `check_build` normally said so before any data was read
            raise self._refused(exc) from exc
        if self.options.quantization is None:
            return check_kernel(model, self.options)
        # bitsandbytes quantizes weights as transformers loads them: the seeded random weights go
        # through a checkpoint, exactly as a pretrained base would.
        # (Written with safetensors directly: under torch.distributed, `save_pretrained` writes on
        # rank 0 only, and every process quantizes its own copy.)
        from safetensors.torch import save_model

        with tempfile.TemporaryDirectory(prefix="finetune-base-") as directory:
            model.config.save_pretrained(directory)
            save_model(model, f"{directory}/model.safetensors", metadata={"format": "pt"})
            del model
            return check_kernel(cls.from_pretrained(directory, **loading_kwargs(self.options)), self.options)

    def _from_config(self, cls, config):
        # An engine that partitions the weights builds them partitioned here, with the weights one
        # process draws (its `Engine.building` context: DeepSpeed's ZeRO-3).
        return cls.from_config(config, attn_implementation=kernel(self.options))

    def build_empty(self, ctx: RunContext, spec: ModelSpec):
        import torch

        with torch.device("meta"):  # unquantized: `finetune plan` counts the weights at their width
            return auto_class(spec.head).from_config(self.build_config(spec), attn_implementation=kernel(self.options))

    def _refused(self, exc: Exception) -> FinetuneError:
        return FinetuneError(
            f"model.config: the {self.options.architecture} architecture refuses this config: "
            f"{type(exc).__name__}: {clip(str(exc), 300)}",
            hint="fix the values in [model] config",
        )


@hookimpl
def register_models(register):
    register(FromConfig)
