"""The decode step (ssmgen.selective_state_update) against its float64 reference: output and
the updated state rows, rows outside the call untouched, padding / out-of-pool indices, the
Mamba-1 and Mamba-2 (heads, groups, scalar A per head) forms, real and complex A; the tuner
never writes the caller's state; bad input names the argument. On CPU the Triton kernel runs in
the interpreter and the CUDA kernel is compiled for sm_80/sm_90; on a GPU both backends run."""
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ssmgen
from ssmgen import autotune
from ssmgen.backends import cuda_backend as cb, cuda_runtime as cr, triton_backend as tb
from ssmgen.numerics import assert_close
from ssmgen.spec import ScanSpec
from ssmgen.step import selective_state_update_ref

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ["triton", "cuda"] if HAS_CUDA else ["triton"]


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    monkeypatch.setenv("SSMGEN_POISON", "1")


def make(c, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, H, P, N, G = c["batch"], c["heads"], c["headdim"], c["N"], c["groups"]
    cplx, dt_ = c["complex"], c["dtype"]
    pool = b + 2 if c["indices"] else b
    sdt = torch.complex64 if cplx else torch.float32
    lead = (H, P) if c["mamba2"] else (P,)
    state = torch.randn((pool,) + lead + (N,), dtype=sdt, generator=g)
    A = -0.5 * torch.rand(lead + (N,), generator=g)
    if c["tie"]:  # Mamba-2: one A per head, broadcast with zero strides
        A = (-0.5 * torch.rand(H, generator=g))[:, None, None].expand(H, P, N)
    if cplx:
        A = torch.complex(A, torch.randn(A.shape, generator=g))
    x = torch.randn((b,) + lead, generator=g).to(dt_)
    dt = (0.5 * torch.rand((b,) + lead, generator=g)).to(dt_)
    bc_lead = (b, G) if c["mamba2"] else (b,)
    if cplx and dt_ == torch.float32 and c["complex_tensor"]:
        B = torch.randn(bc_lead + (N,), dtype=torch.complex64, generator=g)
        C = torch.randn(bc_lead + (N,), dtype=torch.complex64, generator=g)
    else:
        n = 2 * N if cplx else N
        B = torch.randn(bc_lead + (n,), generator=g).to(dt_)
        C = torch.randn(bc_lead + (n,), generator=g).to(dt_)
    D = torch.randn(lead, generator=g) if c["D"] else None
    z = torch.randn((b,) + lead, generator=g).to(dt_) if c["z"] else None
    bias = 0.1 * torch.rand(lead, generator=g) if c["bias"] else None
    idx = None
    if c["indices"]:  # distinct rows of the pool, one padding slot
        idx = torch.randperm(pool, generator=g)[:b]
        idx[0] = -1
    t = [state, x, dt, A, B, C, D, z, bias]
    t = [v.to(DEV) if v is not None else None for v in t]
    return t + [c["softplus"], idx.to(DEV) if idx is not None else None]


@st.composite
def step_cases(draw):
    c = dict(batch=draw(st.integers(1, 4)), N=draw(st.sampled_from([1, 3, 16, 17, 64])),
             complex=draw(st.booleans()), dtype=draw(st.sampled_from(
                 [torch.float32, torch.float16, torch.bfloat16])),
             mamba2=draw(st.booleans()), indices=draw(st.booleans()),
             D=draw(st.booleans()), z=draw(st.booleans()), bias=draw(st.booleans()),
             softplus=draw(st.booleans()), complex_tensor=draw(st.booleans()))
    c["heads"] = draw(st.sampled_from([1, 2, 4])) if c["mamba2"] else 1
    c["groups"] = draw(st.sampled_from([g for g in (1, 2) if c["heads"] % g == 0]))
    c["headdim"] = draw(st.integers(1, 40))
    c["tie"] = c["mamba2"] and draw(st.booleans())
    return c


def check(c, backend, seed=0, config=None):
    args = make(c, seed)
    state0 = args[0].clone()
    y_ref, rows_ref = selective_state_update_ref(*args)
    assert torch.equal(args[0], state0), "the reference must not write the state"
    y = ssmgen.selective_state_update(*args, backend=backend, config=config)
    assert y.shape == args[1].shape and y.dtype == args[1].dtype
    idx = args[10]
    if idx is None:
        assert_close("out", y, y_ref, c["dtype"])
        assert_close("state", args[0], rows_ref, torch.float32)
        return
    live = idx >= 0
    assert_close("out", y[live], y_ref[live], c["dtype"])
    assert torch.equal(y[~live], torch.zeros_like(y[~live])), "padding slots give 0"
    assert_close("state", args[0][idx[live]], rows_ref[live], torch.float32)
    others = torch.ones(args[0].shape[0], dtype=torch.bool, device=DEV)
    others[idx[live]] = False
    assert torch.equal(args[0][others], state0[others]), "rows outside the call were written"


@settings(max_examples=12 if not HAS_CUDA else int(os.environ.get("SSMGEN_EXAMPLES", "40")),
          deadline=None)
@given(c=step_cases(), seed=st.integers(0, 2**31 - 1))
def test_step_matches_reference(c, seed):
    for backend in BACKENDS:
        check(c, backend, seed)


def test_reference_backend_and_out_of_pool_index():
    c = dict(batch=3, heads=2, headdim=5, N=4, groups=1, complex=False, dtype=torch.float32,
             mamba2=True, indices=True, D=True, z=False, bias=True, softplus=True,
             complex_tensor=False, tie=False)
    check(c, "reference")
    for backend in BACKENDS:
        args = make(c)
        before = args[0].clone()
        args[10] = torch.tensor([0, 99, -1], device=DEV)  # 99: past the pool of 5
        y = ssmgen.selective_state_update(*args, backend=backend)
        assert torch.isnan(y[1]).all() and (y[2] == 0).all() and torch.isfinite(y[0]).all()
        assert torch.equal(args[0][1:], before[1:]), "only row 0 may be written"


def test_tuner_never_writes_the_callers_state():
    c = dict(batch=2, heads=1, headdim=8, N=4, groups=1, complex=False, dtype=torch.float32,
             mamba2=False, indices=False, D=True, z=True, bias=False, softplus=False,
             complex_tensor=False, tie=False)
    args = make(c)
    before = args[0].clone()
    calls = []

    def timer(fn):
        fn()
        fn()  # a real timer runs the step many times
        calls.append(1)
        return float(len(calls))

    rec = autotune.tune_step(args, "triton", timer=timer, device={"name": "test"}, save=False)
    assert torch.equal(args[0], before)
    assert rec["config"]["step"] and len(calls) == len([r for r in rec["candidates"]
                                                        if r["ms"] is not None])
    assert rec["spec_key"].startswith("step-")


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(state=torch.zeros(2, 8, 4, dtype=torch.float64)), TypeError, r"state must be torch.float32"),
    (dict(x=torch.zeros(3, 8), dt=torch.rand(3, 8), B=torch.randn(3, 4), C=torch.randn(3, 4)),
     ValueError, r"state has 2 rows but x has batch=3"),
    (dict(A=torch.zeros(8, 5)), ValueError, r"A must have shape \(8, 4\)"),
    (dict(B=torch.zeros(2, 5)), ValueError, r"B must have d_state = 4"),
    (dict(dt=torch.zeros(2, 8, dtype=torch.float16)), ValueError, r"dt must have x's shape"),
    (dict(D=torch.zeros(7)), ValueError, r"D must have shape \(dim,\)"),
    (dict(state_batch_indices=torch.zeros(3, dtype=torch.int64)), ValueError,
     r"state_batch_indices must be an int32/int64 tensor of shape \(batch,\)"),
    (dict(state=torch.zeros(2, 4, 8).transpose(1, 2)), ValueError, r"unit stride along d_state"),
])
def test_step_errors_name_the_argument(kwargs, err, match):
    a = dict(state=torch.zeros(2, 8, 4), x=torch.randn(2, 8), dt=torch.rand(2, 8),
             A=-torch.rand(8, 4), B=torch.randn(2, 4), C=torch.randn(2, 4))
    a.update(kwargs)
    a = {k: v.to(DEV) for k, v in a.items()}
    with pytest.raises(err, match=match):
        ssmgen.selective_state_update(**a)


@pytest.mark.skipif(cr.nvcc_path() is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", [80, 90])
def test_cuda_step_compiles(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path))
    specs = [ScanSpec(16, "bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                      delta_softplus=True),
             ScanSpec(3, "float16", complex_A=True, has_state_indices=True),
             ScanSpec(512, "float32", complex_A=True, has_z=True, has_state_indices=True)]
    for s in specs:
        for k in (cb.default_step_config(s), cb.KernelConfig(threads=64, lpc=4)):
            use = cr.resource_usage(cb.step_kernel_name(s, k), cb.render_step(s, k), arch)
            assert use["spill_stores"] == 0 and 0 < use["registers"] <= 64, use


def test_step_configs_valid():
    for s in (ScanSpec(1), ScanSpec(16), ScanSpec(300, complex_A=True), ScanSpec(512)):
        for mod in (tb, cb):
            mod.check_step(s, mod.default_step_config(s))
            cands = mod.step_candidates(s, 64)
            assert cands
            for k in cands:
                mod.check_step(s, k)
