"""The selective scan's compiled CPU kernel (hpeft/models/csrc/selective_scan.cpp): built on first use with
torch.utils.cpp_extension (a C++ compiler and ninja needed; the build is cached per source and torch
version under torch's extensions folder, ~/.cache/torch_extensions, and takes about half a minute once),
then called through an autograd.Function whose backward is the kernel's own.

Why a kernel of our own: the pure-PyTorch chunked scan makes [L, B, D, N] tensors and about 3 sqrt(L) Python
steps; the kernel keeps a task's states (d_state x one vector of channels) in cache and makes none.
torch.compile was measured as the other way (benchmarks/README.md, scan section).
"""

from __future__ import annotations

import shutil
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).parent / "csrc" / "selective_scan.cpp"
_lock = threading.Lock()
_state: dict = {}


# -march=native: the vector width of this CPU (the build is named after the CPU, so a home folder shared by
# different machines keeps one build per kind); -fno-math-errno and the OpenMP SIMD pragmas let GCC
# vectorise exp and log1p; -fno-trapping-math lets it turn the softplus threshold's branch into a select (without
# it, the backward's softplus loop stayed scalar: a third of its time); no -ffast-math, so NaN and inf keep their
# meaning and sums keep their order.
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]


def build_name() -> str:
    """The extension's name, one per CPU model and instruction set (torch rebuilds it when the source changes)."""
    import hashlib
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        cpu = "\n".join(line for line in info.splitlines() if line.startswith(("model name", "flags")))
    except OSError:
        cpu = platform.processor()
    return "hpeft_selective_scan_cpu_" + hashlib.sha256((cpu + platform.machine()).encode()).hexdigest()[:10]


def unavailable_reason() -> str | None:
    """Why impl="compiled" cannot run here (None when it can); builds the kernel the first time."""
    with _lock:
        if "reason" not in _state:
            _state["reason"] = _build()
    return _state["reason"]


def _build() -> str | None:
    from torch.utils import cpp_extension

    compiler = cpp_extension.get_cxx_compiler()
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} is not on PATH; install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja), which torch.utils.cpp_extension needs to build it"
    name = build_name()
    # A folder per torch version too: a build against one torch's headers must not load into another.
    folder = Path(cpp_extension.get_default_build_root()) / f"torch{torch.__version__}" / name
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / f"{name}.so").is_file():
        print(f"hpeft: building the selective scan's CPU kernel ({SOURCE.name}, once per machine; about 30 s)",
              file=sys.stderr)
    try:
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-lmvec"],
                           is_python_module=False, verbose=False, build_directory=str(folder))
    except Exception as err:  # a compiler error: say so, in one line, with where to look
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return f"building {SOURCE.name} failed ({first[:200]})"
    return None


def _compute(x: Tensor | None, dtype: torch.dtype) -> Tensor:
    return x.to(dtype).contiguous() if x is not None else torch.empty(0, dtype=dtype)


class _CompiledScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        dtype = torch.promote_types(u.dtype, torch.float32)
        args = (_compute(u, dtype), _compute(delta, dtype), _compute(A, dtype), _compute(B.transpose(1, 2), dtype),
                _compute(C.transpose(1, 2), dtype), _compute(D, dtype), _compute(z, dtype), _compute(delta_bias, dtype))
        ctx.save_for_backward(*args)
        ctx.softplus = delta_softplus
        ctx.like = (u, delta, A, B, C, D, z, delta_bias)
        ctx.like = [None if x is None else (x.dtype, x.requires_grad) for x in ctx.like]
        return torch.ops.hpeft_cpu.selective_scan_fwd(*args, delta_softplus).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        args = ctx.saved_tensors
        grads = torch.ops.hpeft_cpu.selective_scan_bwd(grad.to(args[0].dtype).contiguous(), *args, ctx.softplus)
        grads[3], grads[4] = grads[3].transpose(1, 2), grads[4].transpose(1, 2)  # [B, L, N] -> [B, N, L]
        out = [None if like is None or not like[1] else g.to(like[0]) for g, like in zip(grads, ctx.like)]
        return (*out, None)


def compiled_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                  delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    """The scan on the kernel (scan.resolve_impl has checked that it is built and the tensors are on the CPU)."""
    return _CompiledScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def notice_fallback(reason: str) -> None:
    """impl='auto' on the CPU without the kernel: one line, once per process, then the chunked scan."""
    if not _state.get("noticed"):
        _state["noticed"] = True
        print(f"hpeft: selective scan: the compiled CPU kernel is unavailable ({reason}); using impl='chunked'",
              file=sys.stderr)
