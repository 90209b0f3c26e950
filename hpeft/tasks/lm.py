"""Language modelling: next-token cross-entropy on the data module's already shifted labels, and
perplexity (torchmetrics, exact across batches: it accumulates the total NLL and token count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.text import Perplexity


class LanguageModelingTask(nn.Module):
    name = "lm"
    metric = "perplexity"
    higher_is_better = False
    in_channels = out_channels = 0  # token ids in, logits out: the backbone knows its vocabulary

    def __init__(self):
        super().__init__()
        self.val_ppl = Perplexity(ignore_index=-100)
        self.test_ppl = Perplexity(ignore_index=-100)

    def inputs(self, batch: dict) -> torch.Tensor:
        return batch["input_ids"]

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)

    def update(self, split: str, logits: torch.Tensor, batch: dict) -> dict[str, Perplexity]:
        metric = self.val_ppl if split == "val" else self.test_ppl
        metric.update(logits.float(), batch["labels"])
        return {f"{split}/perplexity": metric}

    def example_batch(self, batch_size: int, data_shape: tuple[int, int]) -> dict:
        seq_len, vocab = data_shape
        ids = torch.randint(0, vocab, (batch_size, seq_len + 1))
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
