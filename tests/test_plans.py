"""Call plans (ssmgen.plans): a repeated call with the same signature skips validation, backend
choice, config lookup and kernel building, and must give what the full path gives.

Checked: the second call of a signature takes the plan (no re-validation, no config lookup) and
matches the float64 reference like the first, outputs and every gradient; a value-dependent
check (cu_seqlens) still runs on a hit; a call whose normalization copies an argument makes no
step plan and stays correct; plans keep no caller tensor alive; plans go stale when tuning
records change; the fast launchers (Triton's compiled-kernel launch, the driver launch of the
CUDA backend) match the slow ones on the GPU, misaligned pointers included; a step or an
inference scan (both backends) that matches a C++ launch (backends/fastcall.py) skips the
Python plan, and one that does not (metadata, alignment) takes it, right either way; training
scans (both backends) launch forward and backward in C++ from their third call, and fall
back to the Python backward for another dout or deterministic mode; split CUDA forwards make
no C++ launch.
"""
import gc
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ssmgen
from ssmgen import ops, plans, step, tunecache
from ssmgen.backends import fastcall
from ssmgen.numerics import assert_close
from ssmgen.reference import selective_scan_ref

from test_step import HAS_CUDA, DEV, BACKENDS, check, make, step_cases


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    if HAS_CUDA:  # the C++ launcher built (step plans ask for it without waiting)
        assert fastcall.module() is not None
    monkeypatch.setenv("SSMGEN_POISON", "1")
    monkeypatch.delenv("SSMGEN_PLANS", raising=False)
    ops._plans.clear()
    step._plans.clear()
    yield
    ops._plans.clear()
    step._plans.clear()


def counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapper)
    return calls


# -- decode step ---------------------------------------------------------------------------------
@settings(max_examples=8 if not HAS_CUDA else 40, deadline=None)
@given(c=step_cases(), seed=st.integers(0, 2**31 - 2))
def test_step_plan_matches_reference(c, seed):
    for backend in BACKENDS:
        step._plans.clear()
        check(c, backend, seed)          # full path; leaves a plan
        assert len(step._plans) == 1, "every argument here is read in place: a plan is made"
        looked_up = []
        real = step.step_config
        step.step_config = lambda *a, **k: looked_up.append(1) or real(*a, **k)
        try:
            check(c, backend, seed + 1)  # new values, same signature: the plan
        finally:
            step.step_config = real
        assert not looked_up, "a planned call must not look its config up again"
        if HAS_CUDA:  # the plan's run made its C++ launch: the next call takes it
            assert step._plans.fast((backend, c["softplus"])), "no C++ launch was made"
            ran = []
            real_run = step._Plan.run
            step._Plan.run = lambda *a, **k: ran.append(1) or real_run(*a, **k)
            try:
                check(c, backend, seed + 2)
            finally:
                step._Plan.run = real_run
            assert not ran, "a call matching a C++ launch must not run the Python plan"


def test_step_copied_arguments_make_no_plan():
    """int32 indices and fp16 D are converted by normalize_step (a copy): no plan, still right."""
    c = dict(batch=3, heads=2, headdim=5, N=4, groups=1, complex=False, dtype=torch.float32,
             mamba2=True, indices=True, D=True, z=True, bias=True, softplus=True,
             complex_tensor=False, tie=False)
    for seed in (0, 1):
        args = make(c, seed)
        args[10] = args[10].to(torch.int32)
        args[6] = args[6].half()
        state0 = args[0].clone()
        y_ref, rows = step.selective_state_update_ref(*args)
        y = ssmgen.selective_state_update(*args, backend="triton")
        live = args[10] >= 0
        assert_close("out", y[live], y_ref[live], torch.float32)
        assert_close("state", args[0][args[10][live].long()], rows[live], torch.float32)
        assert not torch.equal(args[0], state0)
    assert len(step._plans) == 0


def test_step_plan_keeps_no_tensor_alive():
    c = dict(batch=2, heads=1, headdim=4, N=3, groups=1, complex=False, dtype=torch.float32,
             mamba2=False, indices=False, D=True, z=False, bias=False, softplus=False,
             complex_tensor=False, tie=False)
    args = make(c)
    ssmgen.selective_state_update(*args, backend="triton")
    assert len(step._plans) == 1
    refs = [weakref.ref(t) for t in args if isinstance(t, torch.Tensor)]
    del args
    gc.collect()
    assert all(r() is None for r in refs), "a plan holds a caller's tensor"


def test_step_bad_input_after_a_plan_still_raises():
    c = dict(batch=2, heads=1, headdim=4, N=3, groups=1, complex=False, dtype=torch.float32,
             mamba2=False, indices=False, D=False, z=False, bias=False, softplus=False,
             complex_tensor=False, tie=False)
    args = make(c)
    ssmgen.selective_state_update(*args, backend="triton")
    args[1] = args[1][:, :3]  # x no longer matches the state
    with pytest.raises(ValueError, match="state must be"):
        ssmgen.selective_state_update(*args, backend="triton")


# -- selective_scan ------------------------------------------------------------------------------
def scan_inputs(seed, b=2, d=3, L=12, N=4, dtype=torch.float32, grad=True):
    g = torch.Generator().manual_seed(seed)
    t = dict(u=torch.randn(b, d, L, generator=g), delta=0.5 * torch.rand(b, d, L, generator=g),
             A=-0.5 * torch.rand(d, N, generator=g), B=torch.randn(b, 1, N, L, generator=g),
             C=torch.randn(b, N, L, generator=g), D=torch.randn(d, generator=g),
             z=torch.randn(b, d, L, generator=g), delta_bias=0.1 * torch.rand(d, generator=g))
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).to(DEV)
            .requires_grad_(grad) for k, v in t.items()}


def scan_check(x, backend, dtype):
    """Out, last state and every gradient against the float64 reference."""
    out, last = ssmgen.selective_scan(**x, delta_softplus=True, return_last_state=True,
                                      backend=backend)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}  # computed in f64
    ref, ref_last = selective_scan_ref(**leaves, delta_softplus=True, return_last_state=True)
    assert_close("out", out, ref, dtype)
    assert_close("last", last, ref_last, torch.float32)
    g_out, g_last = torch.randn_like(ref), torch.randn_like(ref_last)
    got = torch.autograd.grad((out.double() * g_out).sum() + (last.double() * g_last).sum(),
                              list(x.values()))
    want = torch.autograd.grad((ref * g_out).sum() + (ref_last * g_last).sum(),
                               list(leaves.values()))
    for name, gk, gr in zip(x, got, want):
        assert_close(f"d{name}", gk, gr, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_plan_matches_reference_and_skips_the_lookup(backend, monkeypatch):
    dtype = torch.float32
    scan_check(scan_inputs(0, dtype=dtype), backend, dtype)  # full path; leaves a plan
    assert len(ops._plans) == 1
    looked_up = counting(monkeypatch, ops, "_kernel_config")
    scan_check(scan_inputs(1, dtype=dtype), backend, dtype)  # the plan
    assert not looked_up, "a planned call must not look its config up again"
    assert len(ops._plans) == 1
    # another signature (no gradients wanted: no checkpoints) is its own plan
    with torch.no_grad():
        ssmgen.selective_scan(**scan_inputs(2, grad=False), backend=backend)
    assert len(ops._plans) == 2 and len(looked_up) == 1


def test_scan_plan_still_checks_cu_seqlens_values():
    x = scan_inputs(0, b=1, grad=False)
    cu = torch.tensor([0, 5, 12], device=DEV)
    ssmgen.selective_scan(**x, cu_seqlens=cu, backend="triton")
    assert len(ops._plans) == 1
    with pytest.raises(ValueError, match="cu_seqlens must start at 0"):
        ssmgen.selective_scan(**x, cu_seqlens=torch.tensor([0, 7, 5], device=DEV),
                              backend="triton")


def test_plans_go_stale_when_records_change(monkeypatch):
    t = plans.Table()
    t.put("k", "plan")
    assert t.get("k") == "plan"
    tunecache._changed()  # this process wrote a record
    assert t.get("k") is None and len(t) == 0
    t.put("k", "plan")
    now = [0.0]
    monkeypatch.setattr(plans.time, "monotonic", lambda: now[0])
    t.put("k", "plan")
    monkeypatch.setattr(tunecache, "all_records", lambda: [])  # another process wrote one
    now[0] = plans.RECHECK_S / 2
    assert t.get("k") == "plan", "records are re-read at most every RECHECK_S"
    now[0] = 2 * plans.RECHECK_S
    assert t.get("k") is None


def test_plans_off_switch(monkeypatch):
    monkeypatch.setenv("SSMGEN_PLANS", "0")
    with torch.no_grad():
        ssmgen.selective_scan(**scan_inputs(0, grad=False), backend="triton")
    assert len(ops._plans) == 0


# -- fast launchers (GPU) ------------------------------------------------------------------------
@pytest.mark.gpu
def test_triton_fast_launch_handles_misaligned_pointers():
    """The compiled kernel is keyed by pointer alignment: an offset view (4 bytes off) after an
    aligned call must not reuse the kernel compiled for 16-byte-aligned pointers."""
    for off in (0, 1, 0, 3):
        base = torch.randn(2, 3, 64 + 3, device="cuda")
        x = scan_inputs(0, L=64, grad=False)
        x["u"] = base[:, :, off:off + 64].copy_(x["u"])
        with torch.no_grad():
            out = ssmgen.selective_scan(**x, delta_softplus=True, backend="triton")
            ref = selective_scan_ref(**x, delta_softplus=True)  # computed in float64
        assert_close("out", out, ref, torch.float32)


@pytest.mark.gpu
def test_cuda_driver_launch_matches_cupy(monkeypatch):
    from ssmgen.backends import cuda_runtime as cr

    x = scan_inputs(0, b=2, d=8, L=64, grad=False)
    outs = []
    for mode in ("cupy", "driver"):
        monkeypatch.setenv("SSMGEN_CUDA_LAUNCH", mode)
        cr._cu_launch.cache_clear()
        with torch.no_grad():
            outs.append(ssmgen.selective_scan(**x, delta_softplus=True, backend="cuda"))
    cr._cu_launch.cache_clear()
    assert cr._cu_launch() is not None
    assert torch.equal(outs[0], outs[1])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_step_cpp_launch_falls_back_on_any_difference(backend):
    """A serving loop's step: D and dt_bias as nn.Parameter, a state pool with indices. After the
    C++ launch exists, calls that differ in strides or (Triton) alignment of x take the Python
    path and stay right; the original signature takes the C++ launch again."""
    c = dict(batch=5, heads=4, headdim=16, N=16, groups=2, complex=False, dtype=torch.bfloat16,
             mamba2=True, indices=True, D=True, z=True, bias=True, softplus=True,
             complex_tensor=False, tie=True)

    def args_of(seed, x_variant=None):
        a = make(c, seed)
        a[6] = torch.nn.Parameter(a[6])
        a[8] = torch.nn.Parameter(a[8])
        if x_variant == "strided":
            a[1] = torch.cat([a[1], a[1]], dim=-1)[..., :c["headdim"]]
        elif x_variant == "misaligned":
            flat = torch.empty(a[1].numel() + 1, dtype=a[1].dtype, device=DEV)
            a[1] = flat[1:].view(a[1].shape).copy_(a[1])
        return a

    def run_and_check(a):
        state0 = a[0].clone()
        y_ref, rows_ref = step.selective_state_update_ref(*a)
        y = ssmgen.selective_state_update(*a, backend=backend)
        live = a[10] >= 0
        assert_close("out", y[live], y_ref[live], a[1].dtype)
        assert_close("state", a[0][a[10][live]], rows_ref[live], torch.float32)
        assert not torch.equal(a[0], state0)

    for seed in range(3):
        run_and_check(args_of(seed))
    flags = (backend, True)
    assert len(step._plans.fast(flags)) == 1
    ran = []
    real_run = step._Plan.run
    step._Plan.run = lambda *a, **k: ran.append(1) or real_run(*a, **k)
    try:
        run_and_check(args_of(10))
        assert not ran
        # whether each of three calls runs a Python plan: a new signature takes the full path,
        # then its plan (which makes its C++ launch), then that launch; a misaligned x keeps
        # the original signature, whose Triton launch refuses it (kernel specialized on
        # alignment) and whose CUDA launch takes it (no alignment assumed)
        expect = {"strided": [False, True, False],
                  "misaligned": [True, True, True] if backend == "triton" else [False] * 3}
        for variant, want in expect.items():
            for seed, w in zip((20, 21, 22), want):
                ran.clear()
                run_and_check(args_of(seed, variant))
                assert bool(ran) == w, f"{variant}, call {seed - 19}: Python plan run {bool(ran)}"
        ran.clear()
        run_and_check(args_of(30))
        assert not ran, "the first signature's C++ launch is still used"
    finally:
        step._Plan.run = real_run


def _launch_case_inputs(seed, cplx, dt, b, d, L, N):
    """CPU inputs of the C++-launch tests: every option, B (b, 1, N, L) and C (b, N, L), complex
    A with complex B and C; u, delta, z (and real B, C) in dt. Also the generator's randn, for
    more draws."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    A = -0.5 * torch.rand(d, N, generator=g)
    if cplx:
        A = torch.complex(A, r(d, N))
    x = dict(u=r(b, d, L), delta=0.5 * torch.rand(b, d, L, generator=g), A=A,
             B=r(b, 1, N, L), C=r(b, N, L), D=r(d), z=r(b, d, L),
             delta_bias=0.1 * torch.rand(d, generator=g))
    if cplx:
        x["B"], x["C"] = torch.complex(x["B"], r(b, 1, N, L)), torch.complex(x["C"], r(b, N, L))
    for k in ("u", "delta", "z") + (() if cplx else ("B", "C")):
        x[k] = x[k].to(dt)
    return x, r


_INFER_CASES = {
    # a model's D and delta_bias as nn.Parameter (requires_grad, under no_grad), B 4-dim, C
    # 3-dim, the last state returned (the Mamba mixer's prefill)
    "bf16-params-last": dict(dtype=torch.bfloat16, cplx=False, last=True, h0=False,
                             no_grad=True),
    # complex A (the last state a complex view of the fp32 output), an initial state
    "complex-h0-last": dict(dtype=torch.float32, cplx=True, last=True, h0=True, no_grad=True),
    # grad mode on, no input needing a gradient; out alone
    "fp16-grad-mode-out-only": dict(dtype=torch.float16, cplx=False, last=False, h0=False,
                                    no_grad=False),
}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("name", list(_INFER_CASES))
def test_inference_scan_cpp_launch(name, backend, monkeypatch):
    """Inference scans (no input needing a gradient), each backend: the first call takes
    the full path and leaves a plan, the second runs the plan and makes a C++ launch, the third
    takes that launch (no normalization, no Python launch); every call matches the float64
    reference, outputs NaN-poisoned before the kernel writes them. A call with other strides
    takes the Python path and stays right; the launch serves the first signature again."""
    c = _INFER_CASES[name]
    b, d, L, N, dt = 2, 24, 40, 6, c["dtype"]

    def args_of(seed, strided=False):
        x, r = _launch_case_inputs(seed, c["cplx"], dt, b, d, L, N)
        if c["no_grad"]:   # a model's parameters (they require gradients) under no_grad
            x["D"], x["delta_bias"] = map(torch.nn.Parameter, (x["D"], x["delta_bias"]))
        x = {k: (torch.nn.Parameter(v.to(DEV)) if isinstance(v, torch.nn.Parameter)
                 else v.to(DEV)) for k, v in x.items()}
        if strided:   # (made on the device: a copy there would be contiguous)
            x["u"] = torch.cat([x["u"], x["u"]], dim=-1)[..., :L]
        if c["h0"]:
            x["initial_state"] = r(b, d, N).to(A.dtype).to(DEV) if not c["cplx"] else \
                torch.complex(r(b, d, N), r(b, d, N)).to(DEV)
        return x

    def run(x):
        with torch.set_grad_enabled(not c["no_grad"]):
            res = ssmgen.selective_scan(**x, delta_softplus=True, return_last_state=c["last"],
                                        backend=backend)
        out, last = res if c["last"] else (res, None)
        assert not out.requires_grad and out.dtype == dt and out.shape == x["u"].shape
        ref = selective_scan_ref(**{k: v.detach() for k, v in x.items()}, delta_softplus=True,
                                 return_last_state=True)
        assert_close("out", out, ref[0], dt)
        if c["last"]:
            assert last.dtype == x["A"].dtype and not last.requires_grad
            assert_close("last", last, ref[1], torch.float32)

    made = counting(monkeypatch, ops, "_make_fast")
    applied = counting(monkeypatch, ops, "_apply")
    for seed in range(3):
        run(args_of(seed))
    assert len(made) == 1 and len(applied) == 1, (made, applied)   # full path, then the plan's
    flags = (backend, not c["no_grad"], True, c["last"], False)
    assert len(ops._plans.fast(flags)) == 1
    normalized = counting(monkeypatch, ops, "normalize")
    run(args_of(5))
    assert not normalized and len(applied) == 1, "the C++ launch skips the Python path"
    run(args_of(6, strided=True))   # another signature: the full path
    assert len(applied) == 2 and normalized
    run(args_of(7))
    assert len(applied) == 2, "the first signature's launch still serves it"


_TRAIN_CASES = {
    # every input needs a gradient, the last state returned and its gradient used
    "bf16-all-grads-last": dict(dtype=torch.bfloat16, cplx=False, last=True, h0=False,
                                grads="all"),
    # complex A with an initial state (its gradient too) and the last state
    "complex-h0-last": dict(dtype=torch.float32, cplx=True, last=True, h0=True, grads="all"),
    # a model's view: only u, delta and z need gradients (B, C, A, D, delta_bias frozen)
    "fp16-some-grads-out-only": dict(dtype=torch.float16, cplx=False, last=False, h0=False,
                                     grads=("u", "delta", "z")),
    # the Mamba mixer's layouts: delta, z and dout with step stride != 1 (transposed (b, L, d)
    # tensors), which the launches copy as normalization does
    "bf16-mixer-strides": dict(dtype=torch.bfloat16, cplx=False, last=False, h0=False,
                               grads="all", mixer=True),
}


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("name", list(_TRAIN_CASES))
def test_training_scan_cpp_launch(name, backend, monkeypatch):
    """Training calls, each backend: the second call of a signature makes the forward's C++
    launch (with checkpoints), the first backward through it makes the backward's; from the
    third call on both are taken (no normalization, no Python launch, forward or backward).
    Every call's out, last state and every gradient match the float64 reference, outputs
    NaN-poisoned. Arguments with step stride != 1 (the mixer's) are copied by the launches as
    by normalization. A dout with other strides, and deterministic mode, take the Python
    backward and stay right; the launches serve the next call again."""
    c = _TRAIN_CASES[name]
    b, d, L, N, dt = 2, 24, 40, 6, c["dtype"]

    def args_of(seed):
        x, r = _launch_case_inputs(seed, c["cplx"], dt, b, d, L, N)
        if c["h0"]:
            x["initial_state"] = torch.complex(r(b, d, N), r(b, d, N))
        want = x.keys() if c["grads"] == "all" else c["grads"]
        x = {k: v.to(DEV).requires_grad_(k in want) for k, v in x.items()}
        if c.get("mixer"):  # leaves with (b, L, d) memory, seen as (b, d, L)
            for k in ("delta", "z"):
                x[k] = x[k].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
        return x

    def run(x, other_dout=False):
        dout_strided = bool(c.get("mixer")) != other_dout
        res = ssmgen.selective_scan(**x, delta_softplus=True, return_last_state=c["last"],
                                    backend=backend)
        out, last = res if c["last"] else (res, None)
        leaves = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in x.items()}
        ref, ref_last = selective_scan_ref(**leaves, delta_softplus=True, return_last_state=True)
        assert out.dtype == dt and out.requires_grad
        assert_close("out", out, ref, dt)
        g_out = torch.randn(out.shape, device=DEV, dtype=torch.float64)
        if dout_strided:  # (b, L, d) memory, transposed (the mixer's out_proj gives that)
            g_out = g_out.transpose(1, 2).contiguous().transpose(1, 2)
        loss, ref_loss = (out.double() * g_out).sum(), (ref * g_out).sum()
        if c["last"]:
            assert last.dtype == x["A"].dtype and last.requires_grad
            assert_close("last", last, ref_last, torch.float32)
            g_last = torch.randn_like(ref_last)
            loss = loss + (torch.view_as_real(last).double() * torch.view_as_real(g_last)).sum() \
                if c["cplx"] else loss + (last.double() * g_last).sum()
            ref_loss = ref_loss + ((torch.view_as_real(ref_last) * torch.view_as_real(g_last)).sum()
                                   if c["cplx"] else (ref_last * g_last).sum())
        names = [k for k, v in x.items() if v.requires_grad]
        got = torch.autograd.grad(loss, [x[k] for k in names])
        want = torch.autograd.grad(ref_loss, [leaves[k] for k in names])
        for k, gk, gr in zip(names, got, want):
            assert_close(f"d{k}", gk, gr, dt)

    made = counting(monkeypatch, ops, "_make_fast")
    applied = counting(monkeypatch, ops, "_apply")
    backward_py = counting(monkeypatch, ops, "_backward")
    for seed in range(2):
        run(args_of(seed))
    assert len(made) == 1 and len(applied) == 1, (made, applied)
    flags = (backend, True, True, c["last"], False, "train")
    entry = ops._plans.fast(flags)[0][0]
    assert entry.bwd is not None, "the first backward through the plan made its launch"
    assert len(backward_py) == 1, "the full path's backward only"
    normalized = counting(monkeypatch, ops, "normalize")
    for seed in (3, 4):
        run(args_of(seed))
    assert not normalized and len(applied) == 1 and len(backward_py) == 1, \
        "forward and backward launched in C++"
    run(args_of(5), other_dout=True)
    assert len(backward_py) == 2 and len(applied) == 1, "another dout: the Python backward"
    monkeypatch.setenv("SSMGEN_DETERMINISTIC", "1")
    run(args_of(6))
    assert len(backward_py) == 3, "deterministic: the Python backward (its own kernel)"
    monkeypatch.delenv("SSMGEN_DETERMINISTIC")
    normalized.clear()
    run(args_of(7))
    assert len(backward_py) == 3 and not normalized, "the launches serve the plan again"


@pytest.mark.gpu
def test_split_cuda_inference_scan_makes_no_cpp_launch(monkeypatch):
    """A CUDA forward cut into splits (few rows: auto splits; a pre-pass and the main kernel)
    keeps the Python plan, and stays right."""
    from ssmgen.backends import cuda_backend
    made = []
    real = cuda_backend.forward_fast
    monkeypatch.setattr(cuda_backend, "forward_fast",
                        lambda *a: made.append(real(*a)) or made[-1])
    x = lambda seed: scan_inputs(seed, b=1, d=8, L=600, grad=False)  # noqa: E731
    with torch.no_grad():
        for seed in range(3):
            out = ssmgen.selective_scan(**x(seed), delta_softplus=True, backend="cuda")
            ref = selective_scan_ref(**x(seed), delta_softplus=True)
            assert_close("out", out, ref, torch.float32)
    assert len(made) == 1 and made[0][0] is None, "splits: no launch parts"
    assert ops._plans.fast(("cuda", False, False, False, False)) is None
