"""The checks that need a CUDA GPU, in one run that writes one JSON (benchmarks/gpu_check.sh sets up and calls it).

    python -m benchmarks.gpu_check [--out bench_out/gpu_check.json] [--quick]

1. scan: mamba-ssm's fused kernel (impl "cuda") against hpeft's chunked scan on the GPU, forward and gradients
   (float32, max relative difference), and fwd+bwd times at L = 1024 and 4096 for a mamba-130m layer (d_inner
   1536, d_state 16, batch 2), with the sequential reference's time at L = 1024 (the goals table's ratio).
   Without mamba_ssm the kernel side is reported as skipped and the chunked/sequential ratio still runs.
2. lora: a LoRA (q, v, ffn.0) step against a full fine-tuning step on the ChannelTransformer, and hpeft's LoRA
   step against HF peft's on GPT-2 (benchmarks/peft_methods.py's models and batches), interleaved, CUDA-synced.
3. fits: real `hpeft fit` runs on the GPU: NF4 QLoRA with bitsandbytes (configs/llm/tiny_qlora.yaml), and
   bf16-mixed against 32-true for the ChannelTransformer, Mamba (configs/mamba/channel_all.yaml) and a tiny
   Gemma-3 (configs/llm/tiny_pretrain.yaml), a few dozen steps each; metrics, fit seconds and peak memory.

Each check records its error instead of stopping the others. Budget: under 8 minutes on one H100-class GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from benchmarks import peft_methods as pm

REPO = Path(__file__).resolve().parents[1]


DEVICE = "cuda"


def cuda_time(fn, repeats: int) -> float:
    """Median seconds of fn() (CUDA events around each call on the GPU; wall clock with --device cpu), after one
    warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if DEVICE == "cpu":
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def scan_inputs(length: int, d_inner: int = 1536, d_state: int = 16, batch: int = 2) -> dict:
    g = torch.Generator(device=DEVICE).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=DEVICE, generator=g)  # noqa: E731
    return {"u": r(batch, d_inner, length), "delta": r(batch, d_inner, length) * 0.5,
            "A": -torch.rand(d_inner, d_state, device=DEVICE, generator=g) - 0.5,
            "B": r(batch, d_state, length), "C": r(batch, d_state, length), "D": r(d_inner),
            "z": r(batch, d_inner, length), "delta_bias": r(d_inner) * 0.1}


def scan_check(quick: bool, d_inner: int = 1536) -> dict:
    from hpeft.models.scan import cuda_unavailable_reason, selective_scan

    out: dict = {"kernel": cuda_unavailable_reason() or "mamba_ssm selective_scan_fn"}

    def run(impl: str, x: dict):
        leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
        y = selective_scan(**leaves, delta_softplus=True, impl=impl)
        y.backward(torch.ones_like(y))
        return y.detach(), {k: v.grad for k, v in leaves.items()}

    x = scan_inputs(1024, d_inner)
    y_chunked, g_chunked = run("chunked", x)
    if cuda_unavailable_reason() is None:
        y_cuda, g_cuda = run("cuda", x)
        rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))  # noqa: E731
        out["forward_max_rel_diff"] = rel(y_cuda, y_chunked)
        out["grad_max_rel_diff"] = {k: rel(g_cuda[k], g_chunked[k]) for k in g_chunked}
    for length in (1024,) if quick else (1024, 4096):
        x = scan_inputs(length, d_inner)
        for impl in ("chunked", "cuda") if cuda_unavailable_reason() is None else ("chunked",):
            out[f"{impl}_fwd_bwd_s_L{length}"] = cuda_time(lambda: run(impl, x), 5)
    x = scan_inputs(1024, d_inner)
    out["sequential_fwd_bwd_s_L1024"] = cuda_time(lambda: run("sequential", x), 2)
    out["scan_vs_sequential_L1024"] = out["sequential_fwd_bwd_s_L1024"] / out["chunked_fwd_bwd_s_L1024"]
    return out


def lora_check(quick: bool) -> dict:
    import copy

    from hpeft import peft

    repeats = 10 if quick else 30
    base = pm.channel_base().to(DEVICE)
    batch = tuple(t.to(DEVICE) for t in pm.channel_batch(pm.BATCH))
    lora = copy.deepcopy(base)
    peft.apply(lora, [peft.LoRA(rank=pm.LORA_RANK, targets=pm.LORA_TARGETS)])
    full = pm.Trainer(copy.deepcopy(base), batch, pm.nmse)
    lora_t = pm.Trainer(lora, batch, pm.nmse)
    gpt2 = pm.gpt2_base().to(DEVICE)
    ours = pm.hpeft_lora_gpt2(gpt2)
    theirs = pm.hf_lora_gpt2(gpt2, like=ours)
    ids = torch.randint(0, pm.GPT2["vocab_size"], (pm.GPT2_BATCH, pm.GPT2_SEQ), device=DEVICE)
    target = torch.randn(pm.GPT2_BATCH, pm.GPT2_SEQ, pm.GPT2["n_embd"], device=DEVICE)
    hp = pm.Trainer(pm.HiddenState(ours), (ids, target), pm.mse)
    hf = pm.Trainer(pm.HiddenState(theirs), (ids, target), pm.mse)
    times = {name: cuda_time(t.step, repeats) for name, t in
             (("full", full), ("lora", lora_t), ("hpeft_gpt2", hp), ("hf_peft_gpt2", hf))}
    return {**{f"{k}_step_s": v for k, v in times.items()},
            "lora_step_vs_full": times["lora"] / times["full"],
            "lora_step_vs_hf_peft": times["hpeft_gpt2"] / times["hf_peft_gpt2"]}


def fit(config: Path, out: Path, name: str, *overrides: str) -> dict:
    """A real `hpeft fit` on the GPU: its summary's metrics, fit seconds, peak memory (or the error)."""
    runs = out / "runs"
    cmd = [sys.executable, "-m", "hpeft.cli", "fit", "--config", str(config), "--experiment", name,
           "--runs_dir", str(runs), "--wandb", "disabled", "--trainer.accelerator", "gpu" if DEVICE == "cuda" else "cpu", "--trainer.devices", "1",
           "--trainer.enable_progress_bar", "false", *overrides]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        return {"error": result.stderr[-1500:], "seconds": time.perf_counter() - started}
    summary = json.loads(next((runs / name).glob("*/summary.json")).read_text())
    return {"metrics": summary["metrics"], "fit_seconds": summary["speed"]["fit_seconds"],
            "peak_bytes": summary["memory"]["peak_bytes"], "precision": summary.get("precision")}


def fits_check(out: Path, quick: bool) -> dict:
    steps = "10" if quick else "40"
    result = {"qlora_nf4": fit(REPO / "configs/llm/tiny_qlora.yaml", out, "gpu-qlora", "--trainer.max_steps", steps,
                                "--trainer.precision", "bf16-mixed")}
    cases = {"channel": (REPO / "configs/quickstart/pretrain.yaml", ["--data.init_args.num_train", "1024"]),
             "mamba": (REPO / "configs/mamba/channel_all.yaml", ["--data.init_args.num_train", "1024"]),
             "gemma": (REPO / "configs/llm/tiny_pretrain.yaml", ["--model.init_args.save_base_to", "null"])}
    for name, (config, extra) in cases.items():
        runs = {p: fit(config, out, f"gpu-{name}-{p}", "--trainer.max_epochs", "2", "--trainer.max_steps", steps,
                       "--trainer.precision", p, *extra) for p in ("32-true", "bf16-mixed")}
        key = "val/loss" if all("val/loss" in r.get("metrics", {}) for r in runs.values()) else "train/loss"
        a, b = (runs[p].get("metrics", {}).get(key) for p in ("32-true", "bf16-mixed"))
        result[name] = {**runs, "compared": key, "loss_rel_diff": None if a is None or b is None else abs(a - b) / abs(a)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench_out/gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="fewer lengths, steps and repeats")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: the same checks on the CPU at small sizes, to try the script where no GPU is")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
              "cuda": torch.version.cuda}
    for name, check in (("scan", lambda: scan_check(args.quick, 1536 if DEVICE == "cuda" else 64)), ("lora", lambda: lora_check(args.quick)),
                        ("fits", lambda: fits_check(out.parent / "gpu_check_runs", args.quick))):
        started = time.perf_counter()
        try:
            report[name] = check()
        except Exception:  # noqa: BLE001 - one failing check must not hide the others' figures
            report[name] = {"error": traceback.format_exc()[-2000:]}
        report[name]["seconds"] = time.perf_counter() - started
        print(f"gpu_check: {name} done in {report[name]['seconds']:.0f} s", file=sys.stderr)
    from hpeft.utils.atomic import atomic_write_json

    atomic_write_json(out, report)
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
