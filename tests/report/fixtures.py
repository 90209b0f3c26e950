"""Run records written the way RunRecorder writes them (the fields the report reads), for report tests."""

from __future__ import annotations

import json
from pathlib import Path


def summary(run_id: str, variant: str, methods: dict[str, int], metric: float, scenario: str = "InF",
            task: str = "channel", flops: int = 1000, hparams: dict | None = None, layers: list | None = None,
            metric_name: str = "test/nmse_db") -> dict:
    trainable = sum(methods.values())
    return {
        "run_id": run_id, "experiment": "t", "task": task, "variant": variant,
        "metric": {"name": metric_name, "higher_is_better": False},
        "data": {"scenario": [scenario]}, "hparams": hparams or {},
        "methods": [{"name": n, "params": p, "trainable": p, "deployed": p, "configs": [{}]} for n, p in methods.items()],
        "metrics": {metric_name: metric},
        "params": {"total": 1_000_000 + trainable, "trainable": trainable, "base": 1_000_000, "trainable_pct": 0.0},
        "flops": {"forward_per_sample": flops, "train_step_per_sample": 3 * flops},
        "memory": {"peak_bytes": 2**20 * 100, "device": "cpu"}, "speed": {"fit_seconds": 12.0},
        "layers": layers or [], "seed": 0, "versions": {}, "git": "",
    }


def write_runs(root: Path, summaries: list[dict]) -> Path:
    for s in summaries:
        d = root / s["experiment"] / s["run_id"]
        d.mkdir(parents=True, exist_ok=True)
        (d / "summary.json").write_text(json.dumps(s))
    return root


def seed000_runs() -> list[dict]:
    """Seed 000's example, section 6.3: Prompt 12.8K at -25.9 dB, LoRA 49.2K at -26.4 dB, Hybrid-M -26.35 dB,
    plus a dominated adapter and a second hybrid for the heatmap."""
    return [
        summary("prompt", "PromptOnly", {"prompt": 12_800}, -25.9, flops=900, hparams={"prompt_length": 100}),
        summary("lora", "LoRAOnly", {"lora": 49_200}, -26.4, flops=1100, hparams={"lora_rank": 10}),
        summary("hybrid_m", "HybridPromptLoRA", {"prompt": 12_800, "lora": 49_200}, -26.35, flops=1200,
                hparams={"prompt_length": 100, "lora_rank": 10},
                layers=[{"module": f"blocks.{i}.attn.q", "method": "lora", "params": 2000 * (i + 1), "deployed": 0} for i in range(4)]),
        summary("hybrid_s", "HybridPromptLoRA", {"prompt": 6_400, "lora": 49_200}, -26.2, flops=1150,
                hparams={"prompt_length": 50, "lora_rank": 10}),
        summary("adapter", "AdapterOnly", {"adapter": 524_000}, -25.8, flops=1500),
    ]
