"""The selective scan (hpeft/models/scan.py) and the scan orders (hpeft/models/scan_order.py): the chunked scan,
the compiled CPU kernel and their hand-written backwards against the sequential reference (float64), the FLOPs
formula, and the orders' permutations."""

import pytest
import torch
from torch import nn

from hpeft.metrics.flops import count_flops
from hpeft.models import scan_compiled
from hpeft.models.scan import (cuda_unavailable_reason, linear_scan, resolve_impl, scan_flops, selective_scan,
                               selective_scan_reference)
from hpeft.models.scan_order import ScanPath, inverse, parse_order, permutation

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(batch=2, channels=3, length=13, state=4, dtype=torch.float64, seed=0, dt_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return {"u": r(batch, channels, length), "delta": dt_scale * r(batch, channels, length),
            "A": -2 * torch.rand(channels, state, generator=g, dtype=dtype), "B": r(batch, state, length),
            "C": r(batch, state, length), "D": r(channels), "z": r(batch, channels, length), "delta_bias": r(channels)}


def run(inputs: dict, impl: str, **kw):
    """Output and the gradients of a fixed random projection of it, for every input."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = selective_scan(**leaves, impl=impl, **kw)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=y.dtype)
    (y * weight).sum().backward()
    return y.detach(), {k: v.grad for k, v in leaves.items()}


# -- chunked vs the sequential reference ---------------------------------------------------------------------


@pytest.mark.parametrize("length,chunk", [(13, 0), (13, 4), (13, 1), (16, 4), (7, 20), (1, 0)])
@pytest.mark.parametrize("optional", ["all", "none"])
def test_chunked_matches_the_sequential_reference_forward_and_backward(length, chunk, optional):
    inputs = scan_inputs(length=length)
    if optional == "none":  # no D, z, delta_bias
        inputs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    kw = {"delta_softplus": optional == "all"}
    y_ref, g_ref = run(inputs, "sequential", **kw)
    y, g = run(inputs, "chunked", chunk=chunk, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name in inputs:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("length", [13, 1, 40])
@pytest.mark.parametrize("optional", ["all", "none", "no_softplus"])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_matches_the_sequential_reference_forward_and_backward(length, optional, threads):
    """Several batches and channels on 2 threads too: dB and dC sum over channels through per-thread slabs, dA
    over batches through per-(b, d) rows; a race there would show as a wrong gradient."""
    inputs = scan_inputs(batch=3, channels=5, length=length)
    if optional == "none":
        inputs = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    kw = {"delta_softplus": optional == "all"}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, g = run(inputs, "compiled", **kw)
    finally:
        torch.set_num_threads(before)
    y_ref, g_ref = run(inputs, "sequential", **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name in inputs:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("channels,length,state", [
    (13, 150, 16),  # several blocks of steps (64 at most) and a tail group of channels (lanes of 4 or 8 per task)
    (2, 600, 2048),  # [L, N, lanes] decays past the kernel's 32 MiB budget: the backward recomputes them per block
    (3, 20, 0),  # no state at all: y = D u
])
def test_compiled_matches_the_reference_across_blocks_groups_and_the_recomputed_decays(channels, length, state):
    inputs = scan_inputs(batch=2, channels=channels, length=length, state=state)
    y, g = run(inputs, "compiled", delta_softplus=True)
    y_ref, g_ref = run(inputs, "sequential", delta_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name in inputs:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_the_hand_written_backward_passes_gradcheck(impl):
    inputs = scan_inputs(batch=2, channels=2, length=6, state=3)
    leaves = tuple(inputs[k].clone().requires_grad_() for k in NAMES)
    assert torch.autograd.gradcheck(lambda *x: selective_scan(*x, delta_softplus=True, impl=impl, chunk=4), leaves)


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_float32_scan_is_stable_at_the_seeds_largest_state_and_long_steps(impl):
    """d_state 2048 with A down to -2048 and dt around 1-3: decays of exp(-6000) per step. A scan that divides by
    cumulative decays overflows here; both only multiply factors in (0, 1]."""
    inputs = scan_inputs(batch=1, channels=2, length=40, state=2048, dtype=torch.float32, dt_scale=3.0)
    inputs["A"] = -torch.arange(1, 2049, dtype=torch.float32).expand(2, -1).contiguous()
    y, grads = run(inputs, impl, chunk=8, delta_softplus=True)
    ref_inputs = {k: v.double().requires_grad_() for k, v in inputs.items()}
    ref = selective_scan_reference(**ref_inputs, delta_softplus=True)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads.values())
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-4, atol=1e-4)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float32)
    (ref * weight.double()).sum().backward()
    for name in ("u", "delta", "B", "C"):
        torch.testing.assert_close(grads[name].double(), ref_inputs[name].grad, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("impl", ["chunked", "compiled"])
def test_output_and_gradients_keep_the_input_dtype(impl):
    inputs = {k: v.to(torch.bfloat16) for k, v in scan_inputs(dtype=torch.float32).items()}
    y, grads = run(inputs, impl)
    assert y.dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in grads.values())


def test_linear_scan_forward_and_reverse_equal_their_loops():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(11, 5, generator=g, dtype=torch.float64), torch.randn(11, 5, generator=g, dtype=torch.float64)
    forward, reverse, h = [], [], torch.zeros(5, dtype=torch.float64)
    for t in range(11):
        h = a[t] * h + b[t]
        forward.append(h)
    h = torch.zeros(5, dtype=torch.float64)
    for t in reversed(range(11)):
        h = a[t] * h + b[t]
        reverse.insert(0, h)
    for chunk in (1, 3, 4, 11):
        torch.testing.assert_close(linear_scan(a, b, chunk), torch.stack(forward))
        torch.testing.assert_close(linear_scan(a, b, chunk, reverse=True), torch.stack(reverse))


# -- implementation choice and bad input ------------------------------------------------------------------------


def test_unknown_impl_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"impl='fast'.*'auto', 'sequential', 'chunked', 'compiled', 'cuda'"):
        selective_scan(**scan_inputs(), impl="fast")


def test_negative_chunk_is_refused():
    with pytest.raises(ValueError, match="chunk=-1"):
        selective_scan(**scan_inputs(), impl="chunked", chunk=-1)


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="mamba_ssm and a GPU are here")
def test_cuda_impl_without_mamba_ssm_or_gpu_says_why():
    with pytest.raises(RuntimeError, match="impl='cuda' cannot run: .*(CUDA|mamba_ssm)"):
        selective_scan(**scan_inputs(), impl="cuda")


def test_auto_takes_the_compiled_kernel_on_cpu():
    assert scan_compiled.unavailable_reason() is None  # this machine has g++ and ninja: the kernel must build
    assert resolve_impl("auto", torch.zeros(1)) == "compiled"
    with torch.device("meta"):
        assert resolve_impl("auto", torch.zeros(1)) == "chunked"


@pytest.fixture
def no_compiler(monkeypatch):
    """This process as it would be without a C++ compiler: CXX names one that does not exist (torch's
    cpp_extension reads CXX), and the kernel's cached build state is forgotten and restored afterwards."""
    saved = dict(scan_compiled._state)
    scan_compiled._state.clear()
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    yield
    scan_compiled._state.clear()
    scan_compiled._state.update(saved)


def test_compiled_without_a_compiler_names_what_is_missing_and_what_is_available(no_compiler):
    with pytest.raises(RuntimeError, match=r"impl='compiled' cannot run: no C\+\+ compiler .*/nonexistent/c\+\+.*"
                                           r"available here: \['auto', 'sequential', 'chunked'\]"):
        selective_scan(**scan_inputs(), impl="compiled")


def test_auto_without_a_compiler_falls_back_with_one_notice(no_compiler, capsys):
    inputs = scan_inputs()
    y1, y2 = selective_scan(**inputs), selective_scan(**inputs)
    notice = capsys.readouterr().err
    assert notice.count("compiled CPU kernel is unavailable (no C++ compiler") == 1 and "impl='chunked'" in notice
    torch.testing.assert_close(y1, selective_scan_reference(**inputs), rtol=1e-10, atol=1e-10)
    assert torch.equal(y1, y2)


def test_custom_op_registration_passes_torch_opcheck():
    inputs = scan_inputs(batch=1, channels=2, length=5, state=3)
    args = tuple(inputs[k].clone().requires_grad_() for k in NAMES) + (True, 2)
    torch.library.opcheck(torch.ops.hpeft.selective_scan.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# -- FLOPs -----------------------------------------------------------------------------------------------------


def test_flop_counter_counts_the_scan_by_its_formula_forward_and_backward():
    batch, channels, length, state = 2, 3, 13, 4
    inputs = scan_inputs(batch, channels, length, state)
    # Forward, per (b, d, t): 7 per state (dt*A, exp, (dt u)*B, a h + b, C h summed) and 1 (dt*u) + 1 (bias)
    # + 1 (softplus) + 2 (D u added) + 3 (silu(z) gate).
    assert scan_flops(batch, channels, length, state, D=True, z=True, delta_bias=True, delta_softplus=True) == \
        batch * channels * length * (7 * state + 8)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    for impl in ("chunked", "sequential"):  # the same count whichever implementation runs
        assert count_flops(lambda: selective_scan(**leaves, delta_softplus=True, impl=impl)) == 2 * 3 * 13 * (7 * 4 + 8)
    # Backward: 20 per state + 2 (z), and 6 + 2 (bias) + 3 (softplus) + 3 (D) + 9 + 2 (z with D) once.
    step = count_flops(lambda: selective_scan(**leaves, delta_softplus=True, impl="chunked").sum().backward())
    assert step == 2 * 3 * 13 * (7 * 4 + 8) + 2 * 3 * 13 * (22 * 4 + 25)
    plain = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    assert count_flops(lambda: selective_scan(**plain)) == 2 * 3 * 13 * (7 * 4 + 1)


# -- scan orders (pillar 1) -------------------------------------------------------------------------------------

GRID_ORDERS = ("forward", "reverse", "time", "frequency", "snake", "snake_frequency")


@pytest.mark.parametrize("direction", GRID_ORDERS)
def test_every_order_is_a_permutation_that_inverts(direction):
    p = permutation(direction, (3, 5))
    assert sorted(p.tolist()) == list(range(15))
    x = torch.randn(15)
    torch.testing.assert_close(x[p][inverse(p)], x)


def test_orders_visit_the_grid_as_named():
    assert permutation("time", (2, 3)).tolist() == [0, 1, 2, 3, 4, 5]  # symbol-major
    assert permutation("frequency", (2, 3)).tolist() == [0, 3, 1, 4, 2, 5]  # subcarrier-major
    assert permutation("snake", (2, 3)).tolist() == [0, 1, 2, 5, 4, 3]
    assert permutation("snake_frequency", (2, 3)).tolist() == [0, 3, 4, 1, 2, 5]


@pytest.mark.parametrize("direction", ["snake", "snake_frequency"])
def test_snake_orders_step_between_grid_neighbours(direction):
    rows, cols = 4, 5
    cells = [divmod(i, cols) for i in permutation(direction, (rows, cols)).tolist()]
    assert all(abs(r1 - r2) + abs(c1 - c2) == 1 for (r1, c1), (r2, c2) in zip(cells, cells[1:]))


def test_scan_path_runs_each_direction_and_fuses_in_place():
    """A mixer that returns each token's position in the scan shows what every direction saw."""
    class Step(nn.Module):
        def forward(self, x):
            return torch.arange(x.shape[1], dtype=x.dtype).expand_as(x[..., 0]).unsqueeze(-1) + 0 * x

    x = torch.zeros(1, 2 + 6, 1)  # two prompt tokens in front of a 2x3 grid
    path = ScanPath("time+frequency", grid=(2, 3), fuse="sum")
    out = path(Step(), x)[0, :, 0].tolist()
    # time: token j at step j. frequency scans grid tokens [0, 3, 1, 4, 2, 5] after the prompts, so grid
    # tokens 0..5 sit at steps 2 + [0, 2, 4, 1, 3, 5]. Prompts stay first in both.
    assert out == [0 + 0, 1 + 1, 2 + 2, 3 + 4, 4 + 6, 5 + 3, 6 + 5, 7 + 7]
    mean = ScanPath("bidirectional", fuse="mean")(Step(), torch.zeros(1, 4, 1))[0, :, 0].tolist()
    assert mean == [1.5, 1.5, 1.5, 1.5]  # step t forward, 3 - t backward


@pytest.mark.parametrize("order,grid,message", [
    ("time", None, r"scan_order='time' does not fit .*1-D sequence.*'forward', 'reverse', 'bidirectional'"),
    ("diagonal", (2, 3), r"scan_order='diagonal' does not fit .*2x3 token grid.*'snake'"),
    ("time+time", (2, 3), r"names a direction twice"),
])
def test_an_order_that_does_not_fit_the_input_names_it_and_the_valid_ones(order, grid, message):
    with pytest.raises(ValueError, match=message):
        parse_order(order, grid)
    assert parse_order("bidirectional", grid) == ["forward", "reverse"]
