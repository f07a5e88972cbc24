"""Batching encoded rows: pad each batch to its longest row (or to a fixed length)."""

from __future__ import annotations

from collections.abc import Sequence

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class PadCollator:
    """Pads `input_ids` with the pad id, masks with 0, and sequence `labels` with -100.

    Padding is masked by position, never recognised by token id: a tokenizer that pads with its
    EOS token still has every real EOS supervised. Keys other than model inputs, `labels` and a
    loss `weight` (such as `length`) are dropped.

    The built-in tasks pad on the right, whatever side a tokenizer was saved with: under causal
    attention no real token then sees the padding, and every real token keeps the position it has
    in the row alone, so a row's outputs do not depend on its batch. (Generation pads prompts on
    the left itself: plugins/tasks/_generation.py.)
    """

    def __init__(
        self, pad_token_id: int, pad_to: int | None = None, sequence_labels: bool = False, side: str = "right"
    ):
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.sequence_labels = sequence_labels
        self.left = side == "left"

    def _pad(self, row: list, width: int, fill) -> list:
        padding = [fill] * (width - len(row))
        return padding + row if self.left else row + padding

    def __call__(self, features: Sequence[dict]):
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        width = max(self.pad_to or 0, longest)
        batch = {}
        for key in MODEL_INPUTS:
            if key not in features[0]:
                continue
            fill = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([self._pad(list(f[key]), width, fill) for f in features])
        if "attention_mask" not in batch:
            batch["attention_mask"] = torch.tensor([self._pad([1] * len(f["input_ids"]), width, 0) for f in features])
        if "labels" in features[0]:
            if self.sequence_labels:
                batch["labels"] = torch.tensor([self._pad(list(f["labels"]), width, -100) for f in features])
            else:
                labels = [f["labels"] for f in features]
                dtype = torch.float32 if isinstance(labels[0], float) else torch.long
                batch["labels"] = torch.tensor(labels, dtype=dtype)
        if "weight" in features[0]:  # per-row loss weights (reweighting), used by the trainer
            batch["weight"] = torch.tensor([f["weight"] for f in features], dtype=torch.float32)
        return batch


class PackedCollator:
    """Batches packed rows (see runner.pipeline.packing), or plain rows, without an attention mask.

    Each row's position ids restart at every sample it holds; transformers derives a causal mask
    that keeps the samples apart from them, which it does only when there is no attention mask and
    no cache (the 'varlen' kernel derives its cu_seqlens from them: runner.toolkit.varlen_attention).
    Padding at a row's end gets positions of its own, so it forms a separate segment that
    no real token attends to, and labels of -100.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict]):
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids, labels, positions = [], [], []
        for f in features:
            n = len(f["input_ids"])
            own = list(f["position_ids"]) if "position_ids" in f else list(range(n))
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * (width - n))
            labels.append(list(f["labels"]) + [-100] * (width - n))
            positions.append(own + list(range(width - n)))
        return {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "position_ids": torch.tensor(positions),
            "use_cache": False,
        }
