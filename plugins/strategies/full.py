"""Strategy `full`: every parameter trains."""

from __future__ import annotations

from runner import Options, Strategy, hookimpl


class FullOptions(Options):
    pass


class Full(Strategy):
    """Full fine-tuning: every parameter trains."""

    name = "full"
    Options = FullOptions

    def apply(self, model, ctx, spec):
        for param in model.parameters():
            param.requires_grad_(True)
        return model


@hookimpl
def register_strategies(register):
    register(Full)
