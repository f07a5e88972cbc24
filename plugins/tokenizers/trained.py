"""Tokenizer `trained`: a new tokenizer trained on the training texts with `tokenizers`.

For offline recipes and models built from a config: no download, a vocabulary fitted to the data,
and a dedicated [PAD] token (so padding never collides with EOS). Training is deterministic: the
same texts give the same vocabulary. (The `tokenizers` WordPiece trainer breaks ties in a random
order from run to run, which is why it is not offered.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner import RunContext, Tokenizer, TokenizerOptions, hookimpl

SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}


class TrainedTokenizerOptions(TokenizerOptions):
    algorithm: Literal["bpe", "wordlevel"] = Field(
        default="bpe",
        description="Tokenizer model: byte-level 'bpe' (no unknown tokens) or whole-word 'wordlevel'.",
    )
    vocab_size: int = Field(default=2000, ge=len(SPECIAL) + 1, description="Largest vocabulary to learn.")
    min_frequency: int = Field(default=1, ge=1, description="Ignore pieces seen fewer times than this.")
    lowercase: bool = Field(default=True, description="Lower-case text before tokenizing.")


class Trained(Tokenizer):
    """A tokenizer trained on the training texts (byte-level BPE or word level), deterministically."""

    name = "trained"
    Options = TrainedTokenizerOptions
    trains_on_data = True

    def build(self, ctx: RunContext, texts):
        from tokenizers import Tokenizer as RawTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        o = self.options
        special = list(SPECIAL.values())
        norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if o.lowercase else [])
        if o.algorithm == "bpe":
            tok = RawTokenizer(models.BPE(unk_token=None))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
            tok.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=o.vocab_size,
                min_frequency=o.min_frequency,
                special_tokens=special,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,  # its own bars would break into the reporter's output
            )
        else:
            tok = RawTokenizer(models.WordLevel(unk_token="[UNK]"))
            tok.pre_tokenizer = pre_tokenizers.Whitespace()
            trainer = trainers.WordLevelTrainer(
                vocab_size=o.vocab_size, min_frequency=o.min_frequency, special_tokens=special, show_progress=False
            )
        tok.normalizer = normalizers.Sequence(norm)
        tok.train_from_iterator(texts(), trainer=trainer)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, model_max_length=o.max_length or 512, padding_side="right", **SPECIAL
        )


@hookimpl
def register_tokenizers(register):
    register(Trained)
