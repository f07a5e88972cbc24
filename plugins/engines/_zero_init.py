"""A seeded random model built partitioned under ZeRO-3 with the weights one process would draw.

transformers' own ZeRO-3 path (`from_config` while a DeepSpeed config is registered) builds the
layers with torch's initialisation switched off, then initialises each module on rank 0 alone. One
process draws differently: every layer's constructor draws its default initialisation, and the
model's `_init_weights` then draws again, from a random state those draws have moved on. The
weights would differ from a single-process run of the same seed, and so would the trained model.

`seeded_from_config()`, entered by the DeepSpeed engine's `building` context under ZeRO-3, has every
model built from a config there (the `config` model, or a third party's) built by `build_partitioned`,
which keeps one process's order of draws: the constructors run and draw as usual
inside `deepspeed.zero.Init` (each layer is created whole, drawn, then partitioned before the next
one exists), and the model's own initialisation runs at the moment it always does, with each module's
weights gathered around its `_init_weights` call. Every rank draws the same numbers (the random state
is the same on all of them), so no rank's state drifts from the others'. On a CPU the weights equal
one process's exactly; on GPUs zero.Init creates the layers on the GPU, whose generator draws other
numbers than the CPU's (the same distribution, a different sample).
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def _gathered_initialisation():
    """`PreTrainedModel.initialize_weights`, in its own module order, with each module's weights
    (and its direct children's, which `_init_weights` may touch) gathered around the call."""
    import deepspeed
    import torch
    from transformers import initialization
    from transformers.modeling_utils import PreTrainedModel

    original = PreTrainedModel.initialize_weights

    def initialize_weights(self):
        custom = self.is_custom_code()

        def apply(module, fn):
            for child in module.children():
                apply(child, child._initialize_weights if isinstance(child, PreTrainedModel) else fn)
            if getattr(module, "_is_hf_initialized", False):
                return  # initialised already (a nested model's own post_init): no gather for nothing
            params = list(module.parameters(recurse=False))
            for child in module.children():
                if not isinstance(child, PreTrainedModel):
                    params.extend(child.parameters(recurse=False))
            # every rank draws, so that the random state stays the same on all of them
            with deepspeed.zero.GatheredParameters(params, modifier_rank=0):  # no-op if none is partitioned
                fn(module, custom)

        with torch.no_grad(), initialization.guard_torch_init_functions():
            apply(self, self._initialize_weights)

    PreTrainedModel.initialize_weights = initialize_weights
    try:
        yield
    finally:
        PreTrainedModel.initialize_weights = original


def build_partitioned(from_config, cls, config, **kwargs):
    """`from_config(cls, config, **kwargs)` (transformers' `_from_config`) partitioned by ZeRO-3 as it
    is built (see the module docstring); the DeepSpeed config is the one registered with transformers."""
    import deepspeed
    from transformers.integrations import deepspeed_config
    from transformers.integrations.deepspeed import prevent_arange_dtype_change
    from transformers.modeling_utils import set_zero3_state

    # set_zero3_state tells from_config that zero.Init is on already, so it keeps torch's
    # initialisation and its own post_init (instead of switching both off for a later rank-0 init).
    with (
        deepspeed.zero.Init(config_dict_or_path=deepspeed_config()),
        set_zero3_state(),
        prevent_arange_dtype_change(),
        _gathered_initialisation(),
    ):
        return from_config(cls, config, **kwargs)


@contextlib.contextmanager
def seeded_from_config():
    """While the model is built, a model created from a config (`AutoModel...from_config`, which
    calls `PreTrainedModel._from_config`) is built by `build_partitioned` whenever transformers would
    build it under zero.Init itself: ZeRO-3 registered, and no zero.Init already on (as inside
    `from_pretrained`, or for the models a composite model's constructor builds from its sub-configs)."""
    from transformers import modeling_utils
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.modeling_utils import PreTrainedModel

    original = PreTrainedModel.__dict__["_from_config"]  # the classmethod itself
    plain = original.__func__

    def _from_config(cls, config, **kwargs):
        if modeling_utils._is_ds_init_called or not is_deepspeed_zero3_enabled():
            return plain(cls, config, **kwargs)
        return build_partitioned(plain, cls, config, **kwargs)

    PreTrainedModel._from_config = classmethod(_from_config)
    try:
        yield
    finally:
        PreTrainedModel._from_config = original
