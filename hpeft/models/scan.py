"""Mamba's selective scan behind one function, `selective_scan`, with four implementations.

The scan, per batch b, inner channel d and state n (shapes as mamba-ssm's `selective_scan_fn`):

    u, delta, z: [B, D, L]     A: [D, N]     B, C: [B, N, L]     D, delta_bias: [D]
    dt    = softplus(delta + delta_bias)             (bias and softplus optional)
    h_t   = exp(dt_t A) * h_{t-1} + dt_t B_t u_t     (h_{-1} = 0, a [D, N] state per sample)
    y_t   = sum_n C_t h_t + D u_t                    -> [B, D, L]
    out   = y * silu(z)                              (when z is given)

Implementations (`impl`):
- "sequential": the reference: the recurrence as written, one time step after another, differentiated by
  autograd (`selective_scan_reference`). L Python steps forward and as many autograd nodes backward.
- "chunked": the fast pure-PyTorch scan (`linear_scan`): time cut into chunks of `chunk` steps (about
  sqrt(L)), all chunks scanned at once, their end states carried across chunks, then each chunk rescanned
  from its true start. Only products of decays exp(dt A) in (0, 1] appear, never a division by one, so it
  is as stable as the sequential loop at any d_state and dt (an L x L "segsum" as in Mamba-2's SSD would need
  a B*D*L*L*N tensor here, since Mamba-1's A differs per channel and state). About 3 sqrt(L) Python steps.
  It is the torch custom op `hpeft::selective_scan` with a hand-written backward
  (`hpeft::selective_scan_backward`: a reverse scan of the same recurrence; the states are recomputed, not
  kept, as mamba-ssm's kernel does, so memory stays O(B D L) between forward and backward).
- "compiled": hpeft's C++ CPU kernel (hpeft/models/csrc/selective_scan.cpp, built on first use by
  hpeft/models/scan_compiled.py): one fused pass over time per batch element and vector of channels, forward
  and backward, no [L, B, D, N] tensors. Needs a C++ compiler and ninja.
- "cuda": mamba-ssm's fused kernel (`selective_scan_fn`), when mamba_ssm is installed and the tensors are on
  a GPU. "auto" takes it there, "compiled" on the CPU (or "chunked", with a one-line notice, where the kernel
  cannot be built).

FLOPs: torch's FlopCounterMode counts no element-wise work, so a Mamba's FLOPs would miss its scan. Being an
op of its own lets the counter see the scan and count it by `scan_flops` (registered in
hpeft/metrics/flops.py). Under a FLOP counter (any TorchDispatchMode) every impl runs the custom op, so the
count is the same whichever impl a run uses. The arithmetic runs in float32 (float64 stays float64); the
output has u's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

IMPLS = ("auto", "sequential", "chunked", "compiled", "cuda")


def cuda_kernel():
    """mamba-ssm's selective_scan_fn, or None where mamba_ssm is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def cuda_unavailable_reason() -> str | None:
    """Why impl="cuda" cannot run here (None when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    if cuda_kernel() is None:
        return "mamba_ssm is not installed (pip install mamba-ssm)"
    return None


def check_impl(impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown selective scan impl={impl!r}; valid: {list(IMPLS)}")


def resolve_impl(impl: str, u: Tensor) -> str:
    """The implementation that runs for `impl` on tensors like `u`."""
    check_impl(impl)
    # Under a FLOP counter (any TorchDispatchMode) every impl runs our op: the counter sees it and counts
    # the scan by formula, where it would see only the reference's matmuls or nothing of mamba-ssm's kernel.
    counting = is_in_torch_dispatch_mode()
    if impl == "cuda":
        reason = cuda_unavailable_reason() or (None if u.is_cuda else f"the tensors are on {u.device}, not a GPU")
        if reason:
            raise RuntimeError(f"selective scan impl='cuda' cannot run: {reason}; use impl='auto' or 'chunked'")
        return "chunked" if counting else "cuda"
    if impl == "compiled":
        from hpeft.models import scan_compiled

        reason = scan_compiled.unavailable_reason() or (f"the tensors are on {u.device}; it is a CPU kernel"
                                                        if u.device.type != "cpu" else None)
        if reason:
            raise RuntimeError(f"selective scan impl='compiled' cannot run: {reason}; "
                               f"available here: {available_impls(u)}")
        return "chunked" if counting else "compiled"
    if counting:
        return "chunked"
    if impl == "auto":
        if u.is_cuda:
            return "cuda" if cuda_kernel() is not None else "chunked"
        if u.device.type == "cpu":
            from hpeft.models import scan_compiled

            reason = scan_compiled.unavailable_reason()
            if reason is None:
                return "compiled"
            scan_compiled.notice_fallback(reason)
        return "chunked"
    return impl


def available_impls(u: Tensor) -> list[str]:
    """The implementations that can run on tensors like `u` here."""
    from hpeft.models import scan_compiled

    found = ["auto", "sequential", "chunked"]
    if u.device.type == "cpu" and scan_compiled.unavailable_reason() is None:
        found.append("compiled")
    if u.is_cuda and cuda_kernel() is not None:
        found.append("cuda")
    return found


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   impl: str = "auto", chunk: int = 0) -> Tensor:
    """The selective scan (module docstring) -> [B, D, L] in u's dtype.

    impl: "auto", "sequential", "chunked", "compiled" or "cuda". chunk: the chunked scan's chunk length; 0 picks
    about sqrt(L), which balances the steps inside chunks against the steps across them.
    """
    if chunk < 0:
        raise ValueError(f"chunk={chunk} must be >= 0 (0 picks about sqrt(seq_len))")
    impl = resolve_impl(impl, u)
    if impl == "cuda":
        return cuda_kernel()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "compiled":
        from hpeft.models.scan_compiled import compiled_scan

        return compiled_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == "sequential":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return torch.ops.hpeft.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk)


# ----------------------------------------------------------------------------------- the reference


def selective_scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None,
                             delta_softplus: bool = False) -> Tensor:
    """The scan as its definition reads, one time step after another, differentiated by autograd.
    Per-step slices come from unbind (whose backward is one stack), not from indexing, whose backward
    would write a full-size zero gradient at every step and make the backward quadratic in L."""
    dtype = _compute_dtype(u)
    dt = delta.to(dtype) + (0 if delta_bias is None else delta_bias.to(dtype)[:, None])
    dt = F.softplus(dt) if delta_softplus else dt
    u_, B_, C_ = u.to(dtype), B.to(dtype), C.to(dtype)
    decays = torch.exp(dt.unsqueeze(-1) * A.to(dtype)[:, None]).unbind(2)  # L x [B, D, N]
    inputs = ((dt * u_).unsqueeze(-1) * B_.transpose(1, 2).unsqueeze(1)).unbind(2)
    h = u_.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for a_t, b_t, c_t in zip(decays, inputs, C_.unbind(2)):
        h = a_t * h + b_t
        ys.append((h * c_t.unsqueeze(1)).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u_ * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


# ----------------------------------------------------------------------------------- the chunked scan


def chunk_length(steps: int, chunk: int = 0) -> int:
    return min(steps, chunk if chunk > 0 else math.isqrt(max(steps - 1, 0)) + 1)


def linear_scan(a: Tensor, b: Tensor, chunk: int = 0, reverse: bool = False) -> Tensor:
    """h_t = a_t h_{t-1} + b_t along dim 0 from h_{-1} = 0 (reverse: h_t = a_t h_{t+1} + b_t from the end).

    Chunked in two sweeps over chunks of `chunk` steps, all chunks at once: the first finds each chunk's
    end state from a zero start; the chunks' true start states follow by carrying those across chunks
    with each chunk's total decay (the product of its a); the second sweep rescans every chunk from its
    true start. About 2 sqrt(T) Python steps, no tensor larger than a and b, only products of a's."""
    steps = b.shape[0]
    size = chunk_length(steps, chunk)
    chunks = -(-steps // size)
    pad = chunks * size - steps
    if pad:  # padded steps (a=1, b=0) come last: forward they follow every real step; reverse they keep h=0
        a = torch.cat([a, a.new_ones(pad, *a.shape[1:])])
        b = torch.cat([b, b.new_zeros(pad, *b.shape[1:])])
    a, b = a.view(chunks, size, *a.shape[1:]), b.view(chunks, size, *b.shape[1:])
    h = torch.empty_like(b)
    a_t, b_t, h_t = a.unbind(1), b.unbind(1), h.unbind(1)  # per-step views of all chunks (h's are written)
    order = list(range(size))[::-1] if reverse else list(range(size))
    end = b_t[order[0]]
    for t in order[1:]:
        end = torch.addcmul(b_t[t], a_t[t], end)
    decay = a.prod(dim=1)
    start = torch.zeros_like(end)
    carry = range(chunks - 2, -1, -1) if reverse else range(1, chunks)
    for c in carry:
        prev = c + 1 if reverse else c - 1
        torch.addcmul(end[prev], decay[prev], start[prev], out=start[c])
    torch.addcmul(b_t[order[0]], a_t[order[0]], start, out=h_t[order[0]])
    for prev, t in zip(order, order[1:]):
        torch.addcmul(b_t[t], a_t[t], h_t[prev], out=h_t[t])
    return h.view(chunks * size, *h.shape[2:])[:steps]


def padded_length(steps: int, chunk: int) -> int:
    size = chunk_length(steps, chunk)
    return -(-steps // size) * size


def _time_major(x: Tensor, dtype: torch.dtype, steps: int) -> Tensor:
    """[B, X, L] -> contiguous [steps, B, X] in the compute dtype, zero-padded at the end to `steps`: a
    zero dt makes a = 1 and b = 0 there, so padding the small inputs pads the [L, B, D, N] terms for free."""
    x = x.permute(2, 0, 1).to(dtype)
    return F.pad(x, (0, 0, 0, 0, 0, steps - x.shape[0])) if steps > x.shape[0] else x.contiguous()


def _compute_dtype(u: Tensor) -> torch.dtype:
    return torch.promote_types(u.dtype, torch.float32)


def _discretize(u, delta, A, B, delta_bias, delta_softplus, dtype, steps):
    """Time-major u [steps, B, D], dt before and after softplus (dt is 0 on padded steps), and the inputs
    b = dt B u [steps, B, D, N]."""
    length = u.shape[-1]
    u_t, dt_pre = _time_major(u, dtype, steps), _time_major(delta, dtype, length)
    if delta_bias is not None:
        dt_pre = dt_pre + delta_bias.to(dtype)
    dt = _time_major((F.softplus(dt_pre) if delta_softplus else dt_pre).permute(1, 2, 0), dtype, steps)
    b = (dt * u_t).unsqueeze(-1) * _time_major(B, dtype, steps).unsqueeze(2)
    return u_t, dt_pre, dt, b


@torch.library.custom_op("hpeft::selective_scan", mutates_args=())
def _scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
             delta_bias: Tensor | None, delta_softplus: bool, chunk: int) -> Tensor:
    dtype, length = _compute_dtype(u), u.shape[-1]
    steps = padded_length(length, chunk)
    u_t, _, dt, b = _discretize(u, delta, A, B, delta_bias, delta_softplus, dtype, steps)
    h = linear_scan(torch.exp(dt.unsqueeze(-1) * A.to(dtype)), b, chunk)[:length]
    y = torch.einsum("lbdn,lbn->lbd", h, _time_major(C, dtype, length))
    if D is not None:
        y = y + u_t[:length] * D.to(dtype)
    if z is not None:
        y = y * F.silu(_time_major(z, dtype, length))
    return y.permute(1, 2, 0).to(u.dtype).contiguous()


@_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("hpeft::selective_scan_backward", mutates_args=())
def _scan_backward_op(grad: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                      z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool, chunk: int) -> list[Tensor]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias); an empty tensor for an input that was None.

    The states h are recomputed, not kept from the forward (as mamba-ssm's kernel does). With g = dL/dy
    and lam_t = dL/dh_t = a_{t+1} lam_{t+1} + C_t g_t, a reverse scan of the same recurrence:
    dC_t = sum_d g_t h_t, dB_t = sum_d lam_t dt_t u_t, d(dt u)_t = sum_n lam_t B_t, and through
    a_t = exp(dt_t A) with q_t = lam_t h_{t-1} a_t: d dt_t += sum_n q_t A, dA = sum_{b,t} q_t dt_t.
    """
    dtype, length = _compute_dtype(u), u.shape[-1]
    steps = padded_length(length, chunk)
    A_ = A.to(dtype)
    u_t, dt_pre, dt, b = _discretize(u, delta, A, B, delta_bias, delta_softplus, dtype, steps)
    C_t, B_t, g = _time_major(C, dtype, steps), _time_major(B, dtype, steps), _time_major(grad, dtype, steps)
    # One buffer holds a = exp(dt A) and, one step on, a_next[t] = a[t+1] (0 after the end): the reverse
    # scan's coefficients. Both are views of it, so neither is a copy.
    decays = torch.empty((steps + 1, *b.shape[1:]), dtype=dtype, device=b.device)
    torch.exp(dt.unsqueeze(-1) * A_, out=decays[:-1])
    decays[-1].zero_()
    a, a_next = decays[:-1], decays[1:]
    h = linear_scan(a, b, chunk)
    del b
    empty = lambda: u.new_empty(0)  # noqa: E731 - one per absent input: outputs may not alias each other
    grad_z = grad_D = None
    if z is not None:  # on padded steps g = 0, so every gradient term there is 0
        z_t = _time_major(z, dtype, steps)
        y = torch.einsum("lbdn,lbn->lbd", h, C_t)
        if D is not None:
            y = y + u_t * D.to(dtype)
        sig = torch.sigmoid(z_t)
        grad_z = (g * y * sig * (1 + z_t * (1 - sig)))[:length].permute(1, 2, 0).to(z.dtype).contiguous()
        g = g * z_t * sig
    grad_u = g * D.to(dtype) if D is not None else torch.zeros_like(g)
    if D is not None:
        grad_D = (g * u_t).sum((0, 1)).to(D.dtype)
    lam = linear_scan(a_next, g.unsqueeze(-1) * C_t.unsqueeze(2), chunk, reverse=True)
    grad_C = torch.einsum("lbdn,lbd->lbn", h, g)
    grad_dtu = torch.einsum("lbdn,lbn->lbd", lam, B_t)
    grad_B = torch.einsum("lbdn,lbd->lbn", lam, dt * u_t)
    q = torch.empty_like(lam)  # q[t] = lam[t] h[t-1] a[t]; h[-1] = 0
    q[0].zero_()
    torch.mul(lam[1:], h[:-1], out=q[1:])
    q[1:].mul_(a[1:])
    grad_dt = (grad_dtu * u_t + (q * A_).sum(-1))[:length]
    grad_A = (q * dt.unsqueeze(-1)).sum((0, 1)).to(A.dtype)
    grad_u = grad_u + grad_dtu * dt
    if delta_softplus:
        grad_dt = grad_dt * torch.sigmoid(dt_pre)
    grad_bias = grad_dt.sum((0, 1)).to(delta_bias.dtype) if delta_bias is not None else empty()
    back = lambda x, like: x[:length].permute(1, 2, 0).to(like.dtype).contiguous()  # noqa: E731
    return [back(grad_u, u), back(grad_dt, delta), grad_A, back(grad_B, B), back(grad_C, C),
            empty() if grad_D is None else grad_D, empty() if grad_z is None else grad_z, grad_bias]


@_scan_backward_op.register_fake
def _(grad, u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunk):
    like = lambda x: torch.empty_like(x, memory_format=torch.contiguous_format) if x is not None else u.new_empty(0)  # noqa: E731
    return [like(x) for x in (u, delta, A, B, C, D, z, delta_bias)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*(x for x in inputs[:8] if x is not None))
    ctx.present = [x is not None for x in inputs[:8]]
    ctx.options = inputs[8:]


def _backward(ctx, grad):
    saved = iter(ctx.saved_tensors)
    inputs = [next(saved) if present else None for present in ctx.present]
    grads = torch.ops.hpeft.selective_scan_backward(grad.contiguous(), *inputs, *ctx.options)
    return (*(g if present else None for g, present in zip(grads, ctx.present)), None, None)


_scan_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------- FLOPs


def scan_flops(batch: int, channels: int, length: int, state: int, *, D: bool, z: bool, delta_bias: bool,
               delta_softplus: bool, backward: bool = False) -> int:
    """FLOPs of the scan's arithmetic (the recurrence's, whichever implementation runs it; exp, softplus
    and sigmoid count 1, a multiply-add 2, as torch counts matmuls). Per (b, d, t):

    forward, per state n (7): dt*A, exp, (dt u)*B, h = a h + b (2), y += C h (2);
        once (1..8): dt*u, + delta_bias, softplus, + D u (2), * silu(z) (3: sigmoid, z*, gate *).
    backward, per state n (20, +2 with z): recompute a, b, h (5); C*g and the reverse scan lam (3);
        dC, dB, d(dt u) (2 each); q = lam h a (2) and its dt and A terms (2 each); with z, y's C h (2).
        once (6..25): dt*u twice, d dt from u and its sum (2), du (2); bias 1 + its sum 1; softplus 1 +
        its derivative 2; D: dD (2) and D*g (1); z: sigmoid 1, d silu 6, g*silu 2, and y's D u (2).
    """
    n = state
    if not backward:
        per = 7 * n + 1 + delta_bias + delta_softplus + 2 * D + 3 * z
    else:
        per = 20 * n + 2 * n * z + 6 + 2 * delta_bias + 3 * delta_softplus + 3 * D + z * (9 + 2 * D)
    return batch * channels * length * per


def _flops_formula(backward: bool):
    def formula(*args, out_shape=None, **kwargs) -> int:
        if backward:
            args = args[1:]  # grad_out first
        u, _, A, _, _, D, z, bias, softplus = args[:9]
        return scan_flops(u[0], u[1], u[2], A[1], D=D is not None, z=z is not None, delta_bias=bias is not None,
                          delta_softplus=bool(softplus), backward=backward)
    return formula


FLOP_FORMULAS = {
    torch.ops.hpeft.selective_scan: _flops_formula(backward=False),
    torch.ops.hpeft.selective_scan_backward: _flops_formula(backward=True),
}
