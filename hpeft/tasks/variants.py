"""Variants: one small class per PEFT recipe, with flat typed hyperparameters so a sweep can vary
them directly (`--model hpeft.LoRAOnly --model.lora_rank 16`). Each only builds a method list and
hands everything else to `Hybrid` (composition in a preset, no behaviour of its own)."""

from __future__ import annotations

from hpeft import peft
from hpeft.tasks.base import Hybrid


class Pretrain(Hybrid):
    """Train the whole base model (no PEFT methods), e.g. on source scenarios; `save_base_to` exports it."""

    def __init__(self, **kwargs):
        kwargs.setdefault("train_base", True)
        super().__init__(methods=[], **kwargs)

    def variant_hparams(self) -> dict:
        return {"lr": self.hparams.lr, **self.backbone_config.as_dict()}


class LoRAOnly(Hybrid):
    """LoRA on the seed study's targets: attention Q and V and the FFN's first linear layer."""

    def __init__(
        self,
        lora_rank: int = 8,
        lora_alpha: float | None = None,
        lora_dropout: float = 0.0,
        lora_targets: list[str] = ["q", "v", "ffn.0"],  # noqa: B006 - shown as the default in --help
        rslora: bool = False,
        **kwargs,
    ):
        """
        Args:
            lora_rank: rank r of each LoRA update.
            lora_alpha: LoRA scale numerator (scale alpha / r); defaults to the rank.
            lora_dropout: dropout on the LoRA branch while training.
            lora_targets: module-name patterns of the linear layers to adapt.
            rslora: rank-stabilised scaling alpha / sqrt(r).
        """
        self.flat = {"lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
                     "lora_targets": list(lora_targets), "rslora": rslora}
        spec = peft.LoRA(rank=lora_rank, targets=lora_targets, alpha=lora_alpha, dropout=lora_dropout, rslora=rslora)
        super().__init__(methods=[spec], **kwargs)

    def variant_hparams(self) -> dict:
        return {**self.flat, "lr": self.hparams.lr}
