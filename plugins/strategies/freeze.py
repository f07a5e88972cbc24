"""Strategy `freeze`: train only some modules (named ones, the last N layers, the head); freeze the rest."""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from runner import FinetuneError, Options, Strategy, hookimpl

# Where transformer blocks live, by the attribute path common architectures use.
_LAYER_LISTS = ("transformer.h", "model.layers", "bert.encoder.layer", "distilbert.transformer.layer",
                "roberta.encoder.layer", "gpt_neox.layers", "model.decoder.layers", "encoder.layer")  # fmt: skip


class FreezeOptions(Options):
    train_modules: list[str] = Field(
        default_factory=list,
        description="Regular expressions; a parameter whose name matches one of them trains.",
    )
    train_last_layers: int = Field(default=0, ge=0, description="Also train the last N transformer blocks.")
    train_head: bool = Field(default=True, description="Also train the task head (classifier, score, lm_head).")

    @model_validator(mode="after")
    def _something_trains(self):
        if not self.train_modules and not self.train_last_layers and not self.train_head:
            raise ValueError("nothing would train: set train_head, train_last_layers or train_modules")
        for pattern in self.train_modules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"train_modules: {pattern!r} is not a regular expression ({exc})") from None
        return self


def head_names(model) -> list[str]:
    """Names of the modules that form the task head."""
    names = []
    for candidate in ("classifier", "score", "lm_head", "pre_classifier", "qa_outputs"):
        if getattr(model, candidate, None) is not None:
            names.append(candidate)
    return names


def layer_list(model):
    for path in _LAYER_LISTS:
        node = model
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                break
        if node is not None and hasattr(node, "__len__"):
            return path, node
    return None, None


class Freeze(Strategy):
    """Freeze the model except named modules, the last N layers and/or the head."""

    name = "freeze"
    Options = FreezeOptions

    def apply(self, model, ctx, spec):
        o = self.options
        patterns = [re.compile(p) for p in o.train_modules]
        prefixes = [f"{h}." for h in head_names(model)] if o.train_head else []
        if o.train_last_layers:
            path, layers = layer_list(model)
            if layers is None:
                raise FinetuneError(
                    "strategy.train_last_layers: cannot find this architecture's layer list",
                    hint="name the modules to train with strategy.train_modules instead",
                )
            if o.train_last_layers > len(layers):
                raise FinetuneError(
                    f"strategy.train_last_layers = {o.train_last_layers}, but the model has {len(layers)} layers"
                )
            first = len(layers) - o.train_last_layers
            prefixes += [f"{path}.{i}." for i in range(first, len(layers))]
        trained = 0
        for name, param in model.named_parameters():
            train = any(name.startswith(p) for p in prefixes) or any(p.search(name) for p in patterns)
            param.requires_grad_(train)
            trained += train
        if trained == 0:
            raise FinetuneError("strategy 'freeze' matched no parameter: nothing would train")
        return model


@hookimpl
def register_strategies(register):
    register(Freeze)
