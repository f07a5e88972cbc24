"""Tokenizers and models: what a recipe's `[tokenizer]` and `[model]` build."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from runner.components.base import Component, RunContext
from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class TokenizerOptions(Options):
    """Options every tokenizer has."""

    max_length: int | None = Field(
        default=None, gt=0, description="Truncate inputs to this many tokens (default: the model's limit)."
    )
    padding: Literal["dynamic", "max_length"] = Field(
        default="dynamic",
        description="'dynamic' pads each batch to its longest row; 'max_length' pads every row to max_length.",
    )


class Tokenizer(Component):
    """Provides a tokenizer. Options subclass `TokenizerOptions`."""

    kind = "tokenizer"
    Options = TokenizerOptions
    # True when `build` learns its vocabulary from the training texts: the model's size then
    # depends on the data, which `finetune plan --offline` must load before it can count parameters.
    trains_on_data: ClassVar[bool] = False

    def build(self, ctx: RunContext, texts: Callable[[], Iterator[str]]) -> PreTrainedTokenizerBase:
        """Return a ready tokenizer. `texts()` iterates the training texts, for tokenizers that are
        trained on the data."""
        raise NotImplementedError

    def model_max_length(self) -> int | None:
        """The longest input the tokenizer knows of, if any (used when max_length is not set)."""
        return None


# The heads a task may ask for (`ModelSpec.head`), with the transformers Auto class that builds each.
HEADS = {
    "sequence_classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "token_classification": "AutoModelForTokenClassification",
    "seq2seq_lm": "AutoModelForSeq2SeqLM",
}


@dataclass
class ModelSpec:
    """What a task needs from a model: the head and the sizes that depend on data and tokenizer."""

    head: Literal["sequence_classification", "causal_lm", "token_classification", "seq2seq_lm"]
    vocab_size: int
    max_length: int
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    decoder_start_token_id: int | None = None  # encoder-decoder models start decoding with it

    def config_overrides(self) -> dict[str, Any]:
        """Values to set on the model config (what a pretrained config must be told)."""
        keys = ("pad_token_id", "num_labels", "id2label", "label2id", "problem_type", "decoder_start_token_id")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class Model(Component):
    """Builds the model to fine-tune."""

    kind = "model"

    def build(self, ctx: RunContext, spec: ModelSpec) -> PreTrainedModel:
        """Return the model with the head `spec` asks for."""
        raise NotImplementedError

    def build_empty(self, ctx: RunContext, spec: ModelSpec) -> PreTrainedModel:
        """The model without weights (on PyTorch's meta device): for `finetune plan` to count
        parameters without allocating or downloading them."""
        import torch

        with torch.device("meta"):
            return self.build(ctx, spec)

    def base_reference(self) -> str | None:
        """A hub id or path that loads the untouched base model; None when it exists only in this run
        (random init), in which case the core saves it next to an adapter. This is how a model says
        it is randomly initialised: the baselines, the strategies that need a pretrained base and
        the model card (model/finetune.json records it as `base_model`) read it so."""
        return None

    def source(self) -> dict[str, Any] | None:
        """Where the weights came from when the recipe's options alone do not pin it (a run chosen
        as the newest in a folder, say), with a hash of them: environment.json records it as
        `model_source`. Called after `build`, and by `finetune lock` before any build (which pins
        it as `model.source`: return None where only building would tell, FinetuneError where the
        weights are missing). None (the default) records nothing."""
        return None

    def describe_base(self) -> str | None:
        """What the model is before training, for the baseline row's note, where it is not a
        pretrained model ("the final model of run ..."); None (the default): "the pretrained base
        model". Called after `build`."""
        return None

    def architecture(self) -> str | None:
        """The transformers model type `build` makes ('gpt2', 'llama': its `config.model_type`),
        when the options alone say so (a model built from a config); None when only reading the
        model's files would tell. Validation refuses packing on architectures known to mix packed
        samples with it, before anything is built."""
        return None

    def max_positions(self) -> int | None:
        """The longest sequence the model accepts, if known without loading it."""
        return None

    def quantization_bits(self) -> int | None:
        """4 or 8 when `build` loads the base's weights quantized (QLoRA and the like), else None.
        The core then refuses strategies that would train those weights, and `finetune plan`
        counts them at this width."""
        return None

    def attention_kernel(self) -> str | None:
        """The attention implementation `build` asks transformers for ('eager', 'sdpa',
        'flash_attention_2', 'flex_attention'); None leaves transformers' default."""
        return None
