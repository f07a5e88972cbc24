"""Bottleneck adapters for finetune-runner: the strategy `adapter`.

An adapter is a small bottleneck inserted into each transformer block: a down-projection to a few
dimensions, a non-linearity, an up-projection back, and a residual connection around them, so that
at initialisation (up-projection zero) the model computes exactly what it did before. The base model
stays frozen; the adapters (and the task head) train.

- Houlsby et al. (2019): one adapter after the attention output projection and one after the
  feed-forward output projection of every block (`placement = "houlsby"`).
- Pfeiffer et al. (2020): one adapter after the feed-forward block only (`placement = "pfeiffer"`,
  the default): half the parameters, about the same quality.

peft does not provide these, so this is a plugin of its own, written only against finetune-runner's
public API: a worked example for third-party strategy authors (docs/writing-a-plugin.md).

The saved model is `adapter_model.safetensors` (adapter and head weights only) with
`bottleneck_adapters.json` (where the adapters sit, and how large they are). Adapters cannot be
merged into the base weights: the non-linearity between the projections is not a weight update.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from runner import FinetuneError, Options, Strategy, hookimpl

CONFIG_FILE = "bottleneck_adapters.json"
WEIGHTS_FILE = "adapter_model.safetensors"
HEADS = ("score", "classifier", "pre_classifier")

# The output projections of the attention and feed-forward sublayers, by architecture: an adapter
# goes right after them, before the residual sum and layer norm of the block.
SUBLAYERS = {
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "bert": ("attention.output.dense", "output.dense"),
    "roberta": ("attention.output.dense", "output.dense"),
    "distilbert": ("attention.out_lin", "ffn.lin2"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
}


class AdapterOptions(Options):
    placement: Literal["houlsby", "pfeiffer"] = Field(
        default="pfeiffer",
        description="'houlsby': after attention and feed-forward; 'pfeiffer': after feed-forward only.",
    )
    reduction_factor: int | None = Field(
        default=None, gt=0, description="Bottleneck size = hidden size / reduction_factor (default 16)."
    )
    bottleneck_size: int | None = Field(default=None, gt=0, description="Or give the bottleneck size directly.")
    non_linearity: Literal["relu", "gelu", "silu", "tanh"] = Field(
        default="relu", description="Between the two projections."
    )
    attention_module: str | None = Field(
        default=None, description="Name suffix of the attention output projection (default: by architecture)."
    )
    feedforward_module: str | None = Field(
        default=None, description="Name suffix of the feed-forward output projection (default: by architecture)."
    )
    train_layer_norms: bool = Field(default=False, description="Also train the layer norms, as Houlsby et al. do.")

    @model_validator(mode="after")
    def _one_size(self):
        # Judged on values, not on which keys were written: a resolved recipe writes every option.
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            raise ValueError("give reduction_factor or bottleneck_size, not both")
        return self


def _bottleneck_class():
    import torch

    activations = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "tanh": torch.nn.Tanh}

    class Bottleneck(torch.nn.Module):
        """x + up(f(down(x))), with `up` starting at zero: an identity until it trains."""

        def __init__(self, hidden: int, size: int, non_linearity: str):
            super().__init__()
            self.down = torch.nn.Linear(hidden, size)
            self.act = activations[non_linearity]()
            self.up = torch.nn.Linear(size, hidden)
            torch.nn.init.zeros_(self.up.weight)
            torch.nn.init.zeros_(self.up.bias)

        def forward(self, x):
            return x + self.up(self.act(self.down(x)))

    return Bottleneck


def _output_size(module) -> int:
    if hasattr(module, "out_features"):  # nn.Linear
        return module.out_features
    if hasattr(module, "nf"):  # GPT-2's Conv1D
        return module.nf
    raise FinetuneError(f"strategy 'adapter': cannot tell the output size of {type(module).__name__}")


def _after(module, inputs, output):
    """Forward hook: the sublayer's output goes through its adapter."""
    return module.bottleneck_adapter(output)


class Adapter(Strategy):
    """Bottleneck adapters (Houlsby or Pfeiffer): small trained bottlenecks in every block."""

    name = "adapter"
    Options = AdapterOptions
    aliases = {"adapter_size": "bottleneck_size", "reduction": "reduction_factor"}

    def _targets(self, model) -> list[str]:
        o = self.options
        model_type = getattr(model.config, "model_type", None)
        attention, feedforward = SUBLAYERS.get(model_type, (None, None))
        attention = o.attention_module or attention
        feedforward = o.feedforward_module or feedforward
        wanted = [feedforward] + ([attention] if o.placement == "houlsby" else [])
        if None in wanted:
            raise FinetuneError(
                f"strategy 'adapter' does not know where the sublayers of a '{model_type}' model end",
                hint="name them with strategy.attention_module and strategy.feedforward_module",
            )
        # `<blocks>.<i>.<sublayer>`: anchored at a block index, so BERT's feed-forward "output.dense"
        # does not also match the attention's "attention.output.dense"
        found = [
            name
            for name, _ in model.named_modules()
            for w in wanted
            if name.endswith(f".{w}") and name[: -len(w) - 1].rsplit(".", 1)[-1].isdigit()
        ]
        if not found:
            raise FinetuneError(f"strategy 'adapter': no module of this '{model_type}' model ends with {wanted}")
        return found

    def apply(self, model, ctx, spec):
        bottleneck = _bottleneck_class()
        for param in model.parameters():
            param.requires_grad_(False)
        for name in self._targets(model):
            module = model.get_submodule(name)
            hidden = _output_size(module)
            size = self.options.bottleneck_size or max(1, hidden // (self.options.reduction_factor or 16))
            module.add_module("bottleneck_adapter", bottleneck(hidden, size, self.options.non_linearity))
            module.register_forward_hook(_after)
        norms = self.options.train_layer_norms
        for name, param in model.named_parameters():
            is_norm = "ln_" in name or "norm" in name.lower()
            param.requires_grad_("bottleneck_adapter" in name or name.split(".")[0] in HEADS or (norms and is_norm))
        return model

    def saves_adapter(self) -> bool:
        return True

    def save(self, model, directory) -> None:
        from safetensors.torch import save_file

        directory = Path(directory)
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trained, str(directory / WEIGHTS_FILE))
        config = {
            "strategy": self.name,
            "options": self.options.model_dump(mode="json"),
            "base_model_name_or_path": getattr(model, "name_or_path", None),
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    def load(self, directory, spec, base):
        from safetensors.torch import load_file

        model = self.apply(base(), None, spec)
        weights = load_file(str(Path(directory) / WEIGHTS_FILE))
        missing = set(weights) - {n for n, _ in model.named_parameters()}
        if missing:
            raise FinetuneError(f"{directory}: the saved adapters do not fit this model ({sorted(missing)[:3]} ...)")
        model.load_state_dict(weights, strict=False)
        return model

    def merge(self, model):
        raise FinetuneError(
            "strategy 'adapter' cannot be merged: its bottlenecks are non-linear, not weight updates",
            hint="keep model/ and load it with this plugin installed",
        )


@hookimpl
def register_strategies(register):
    register(Adapter)
