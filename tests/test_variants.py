"""Variants beyond mamba-ssm's selective_scan_fn: initial state and the last state's gradient,
packed sequences (cu_seqlens), with an initial state per sequence too, reverse scans, d_state up
to 512.

The property tests of test_scan_numerics draw these variants against the float64 reference;
here: the properties users rely on, checked kernel against kernel (chunked training over a long
sequence equals one call; a packed batch equals each sequence alone, also from per-sequence
initial states; reverse equals the forward scan of the flipped sequence), packed batches with
initial states drawn by hypothesis against the float64 reference, and the input errors. On CPU
the kernels run through Triton's interpreter; on a GPU the same tests run on both backends.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import ssmgen
from cases import config_of, make_inputs, scan_cases
from ssmgen.numerics import assert_close
from ssmgen.reference import selective_scan_ref

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ["triton", "cuda"] if HAS_CUDA else ["triton"]


def _inputs(batch, dim, L, N, cplx=False, seed=0, groups=2):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, dim, L, generator=g)
    delta = 0.5 * torch.rand(batch, dim, L, generator=g)
    A = -0.5 * torch.rand(dim, N, generator=g)
    if cplx:
        A = torch.complex(A, torch.randn(dim, N, generator=g))
        B = torch.randn(batch, groups, N, L, dtype=torch.complex64, generator=g)
        C = torch.randn(batch, groups, N, L, dtype=torch.complex64, generator=g)
    else:
        B = torch.randn(batch, groups, N, L, generator=g)
        C = torch.randn(batch, groups, N, L, generator=g)
    D = torch.randn(dim, generator=g)
    z = torch.randn(batch, dim, L, generator=g)
    bias = 0.1 * torch.rand(dim, generator=g)
    return [t.to(DEV) for t in (u, delta, A, B, C, D, z, bias)]


def _leaves(xs):
    return [x.detach().clone().requires_grad_(True) for x in xs]


def _cfg(backend, chunk=16):
    if backend == "triton":
        return {"chunk_len": chunk, "block_l": 8, "block_d": 2}
    return {"chunk_len": chunk, "threads": 32, "lpc": 4, "tl": 8, "tb": 4}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cplx", [False, True])
def test_chunked_training_equals_one_call(backend, cplx):
    """Scanning L in two segments, the second starting from the first's last state (with the
    gradient flowing through it), gives the one-call output and every gradient."""
    x = _inputs(2, 4, 40, 3, cplx)
    kw = dict(delta_softplus=True, backend=backend, config=_cfg(backend))
    one = _leaves(x)
    out1, last1 = ssmgen.selective_scan(*one, return_last_state=True, **kw)
    two = _leaves(x)
    u, d, A, B, C, D, z, bias = two
    s = 23  # not a multiple of the chunk

    def seg(t, a, b):
        return t[..., a:b]

    o_a, h = ssmgen.selective_scan(seg(u, 0, s), seg(d, 0, s), A, seg(B, 0, s), seg(C, 0, s), D,
                                   seg(z, 0, s), bias, return_last_state=True, **kw)
    o_b, last2 = ssmgen.selective_scan(seg(u, s, 40), seg(d, s, 40), A, seg(B, s, 40),
                                       seg(C, s, 40), D, seg(z, s, 40), bias,
                                       return_last_state=True, initial_state=h, **kw)
    out2 = torch.cat([o_a, o_b], dim=-1)
    assert_close("out", out2, out1.double(), torch.float32)
    assert_close("last", last2, last1.to(torch.complex128 if cplx else torch.float64),
                 torch.float32)
    gen = torch.Generator().manual_seed(3)
    dout = torch.randn(out1.shape, generator=gen).to(DEV)
    dlast = torch.randn(last1.shape, dtype=last1.dtype, generator=gen).to(DEV)
    g1 = torch.autograd.grad([out1, last1], one, [dout, dlast])
    g2 = torch.autograd.grad([out2, last2], two, [dout, dlast])
    for name, a, b in zip(["u", "delta", "A", "B", "C", "D", "z", "bias"], g2, g1):
        assert_close("d" + name, a, b.to(torch.complex128 if b.is_complex() else torch.float64),
                     torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_packed_batch_equals_each_sequence_alone(backend, reverse):
    """A packed batch (with an empty sequence) gives each sequence's own output, last state and
    gradients, as if it ran alone."""
    bounds = [0, 7, 7, 30, 45]
    x = _inputs(1, 4, 45, 3, seed=1)
    cu = torch.tensor(bounds, device=DEV)
    kw = dict(delta_softplus=True, reverse=reverse, backend=backend, config=_cfg(backend))
    packed = _leaves(x)
    out, last = ssmgen.selective_scan(*packed, return_last_state=True, cu_seqlens=cu, **kw)
    assert last.shape == (4, 4, 3)
    gen = torch.Generator().manual_seed(5)
    dout = torch.randn(out.shape, generator=gen).to(DEV)
    dlast = torch.randn(last.shape, generator=gen).to(DEV)
    gp = torch.autograd.grad([out, last], packed, [dout, dlast])
    outs, grads = [], [torch.zeros_like(t) for t in x]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if a == b:
            assert torch.equal(last[i], torch.zeros_like(last[i])), "an empty sequence's state"
            continue
        alone = _leaves(x)
        u, d, A, B, C, D, z, bias = alone
        o, h = ssmgen.selective_scan(u[..., a:b], d[..., a:b], A, B[..., a:b], C[..., a:b], D,
                                     z[..., a:b], bias, return_last_state=True, **kw)
        assert_close(f"last[{i}]", last[i], h[0].double(), torch.float32)
        outs.append(o)
        g = torch.autograd.grad([o, h], alone, [dout[..., a:b], dlast[i:i + 1]])
        grads = [acc + gi for acc, gi in zip(grads, g)]
    assert_close("out", out, torch.cat(outs, -1).double(), torch.float32)
    for name, a, b in zip(["u", "delta", "A", "B", "C", "D", "z", "bias"], gp, grads):
        assert_close("d" + name, a, b.double(), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reverse_equals_flipped_forward(backend):
    x = _inputs(2, 4, 37, 5, seed=2)
    kw = dict(delta_softplus=True, return_last_state=True, backend=backend, config=_cfg(backend))
    rev = _leaves(x)
    out_r, last_r = ssmgen.selective_scan(*rev, reverse=True, **kw)
    fl = _leaves(x)
    u, d, A, B, C, D, z, bias = fl
    f = lambda t: t.flip(-1)  # noqa: E731
    out_f, last_f = ssmgen.selective_scan(f(u), f(d), A, f(B), f(C), D, f(z), bias, **kw)
    assert_close("out", out_r, f(out_f).double(), torch.float32)
    assert_close("last", last_r, last_f.double(), torch.float32)
    dout = torch.randn(out_r.shape, generator=torch.Generator().manual_seed(9)).to(DEV)
    g_r = torch.autograd.grad(out_r, rev, dout)
    g_f = torch.autograd.grad(out_f, fl, f(dout))
    for name, a, b in zip(["u", "delta", "A", "B", "C", "D", "z", "bias"], g_r, g_f):
        assert_close("d" + name, a, b.double(), torch.float32)


# -- bad input: a clear error before anything runs ------------------------------------------
def _small():
    x = _inputs(2, 4, 9, 3)
    return x[:5]


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(initial_state=torch.zeros(2, 4, 2)), ValueError, r"initial_state must have shape"),
    (dict(initial_state=torch.zeros(2, 4, 3, dtype=torch.float64)), TypeError,
     r"initial_state must be torch.float32"),
    (dict(initial_state=torch.zeros(2, 4, 3, dtype=torch.complex64)), TypeError,
     r"initial_state must be torch.float32"),
    (dict(initial_state=[0.0]), TypeError, r"initial_state must be a torch.Tensor"),
    (dict(cu_seqlens=torch.tensor([0, 9])), ValueError, r"cu_seqlens needs packed inputs with "
     r"batch = 1"),
    (dict(reverse=1), TypeError, r"reverse must be a bool"),
])
def test_variant_errors_name_the_argument(kwargs, err, match):
    u, d, A, B, C = _small()
    kwargs = {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    with pytest.raises(err, match=match):
        ssmgen.selective_scan(u, d, A, B, C, **kwargs)


@pytest.mark.parametrize("cu, err, match", [
    ([0, 4, 9, 8], ValueError, r"cu_seqlens must start at 0, never decrease and end at L=9"),
    ([1, 9], ValueError, r"cu_seqlens must start at 0"),
    ([0, 5], ValueError, r"end at L=9"),
    ([9], ValueError, r"cu_seqlens must be 1-D with num_seqs \+ 1 >= 2"),
    ([[0, 9]], ValueError, r"cu_seqlens must be 1-D"),
])
def test_cu_seqlens_errors(cu, err, match):
    u, d, A, B, C = [t[:1] if t.dim() > 2 else t for t in _small()]
    with pytest.raises(err, match=match):
        ssmgen.selective_scan(u, d, A, B, C, cu_seqlens=torch.tensor(cu, device=DEV))


def test_cu_seqlens_dtype():
    u, d, A, B, C = [t[:1] if t.dim() > 2 else t for t in _small()]
    with pytest.raises(TypeError, match=r"cu_seqlens must be int32 or int64"):
        ssmgen.selective_scan(u, d, A, B, C, cu_seqlens=torch.tensor([0.0, 9.0], device=DEV))


@pytest.mark.parametrize("h0, err, match", [
    # one state for the whole packed batch (its batch of 1) is not one per sequence
    (torch.zeros(1, 4, 3), ValueError, r"initial_state with cu_seqlens must have shape "
     r"\(num_seqs, dim, d_state\) = \(3, 4, 3\).*got \(1, 4, 3\)"),
    (torch.zeros(3, 4, 2), ValueError, r"initial_state with cu_seqlens must have shape"),
    (torch.zeros(3, 4), ValueError, r"initial_state with cu_seqlens must have shape"),
    (torch.zeros(3, 4, 3, dtype=torch.float64), TypeError, r"initial_state must be torch.float32"),
    (torch.zeros(3, 4, 3, dtype=torch.complex64), TypeError,
     r"initial_state must be torch.float32"),
])
def test_initial_state_with_cu_seqlens_errors(h0, err, match):
    u, d, A, B, C = [t[:1] if t.dim() > 2 else t for t in _small()]
    with pytest.raises(err, match=match):
        ssmgen.selective_scan(u, d, A, B, C, cu_seqlens=torch.tensor([0, 4, 4, 9], device=DEV),
                              initial_state=h0.to(DEV))


def test_d_state_limit_is_512():
    u, d, _, _, _ = _small()
    for N, ok in ((512, True), (513, False)):
        A = -torch.rand(4, N, device=DEV)
        B = torch.randn(2, N, 9, device=DEV)
        if ok:
            out = ssmgen.selective_scan(u, d, A, B, B, backend="reference")
            assert out.shape == u.shape
        else:
            with pytest.raises(ValueError, match=r"d_state must be in 1\.\.512, got 513"):
                ssmgen.selective_scan(u, d, A, B, B)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dim,groups", [(6, 2), (8, 1)])
def test_deterministic_backward_matches_the_atomic_one(backend, dim, groups, monkeypatch):
    """SSMGEN_DETERMINISTIC=1: variable dB / dC from per-block partials (no atomics) equal the
    default backward's and the reference's; dim 6 in 2 groups makes the Triton backend shrink
    its channel block to 1 (3 channels per group) and the CUDA backend tile 3-channel segments."""
    xs = _inputs(1, dim, 24, 3, groups=groups, seed=5)
    dout = torch.randn(1, dim, 24, generator=torch.Generator().manual_seed(6)).to(DEV)
    grads = []
    for det in ("0", "1"):
        monkeypatch.setenv("SSMGEN_DETERMINISTIC", det)
        leaves = _leaves(xs)
        out = ssmgen.selective_scan(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                                    delta_softplus=True, backend=backend, config=_cfg(backend))
        grads.append(torch.autograd.grad(out, leaves, dout))
    leaves = _leaves(xs)  # the reference computes in float64
    ref = ssmgen.selective_scan(*leaves[:5], D=leaves[5], z=leaves[6], delta_bias=leaves[7],
                                delta_softplus=True, backend="reference")
    gref = torch.autograd.grad(ref, leaves, dout)
    for name, a, b, r in zip("u delta A B C D z bias".split(), *grads, gref):
        assert_close(f"d{name} (deterministic)", b, r, torch.float32)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("how", ["env", "torch"])
def test_deterministic_backward_is_bit_identical(backend, how, monkeypatch):
    """Many channel blocks adding into one group's dB / dC: with atomics the order varies run to
    run; in deterministic mode five backwards give bit-identical gradients."""
    xs = _inputs(2, 1024, 1024, 16, groups=1, seed=7)
    dout = torch.randn(2, 1024, 1024, device=DEV)
    if how == "env":
        monkeypatch.setenv("SSMGEN_DETERMINISTIC", "1")
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runs = []
        for _ in range(5):
            leaves = _leaves(xs)
            out = ssmgen.selective_scan(*leaves[:5], D=leaves[5], z=leaves[6],
                                        delta_bias=leaves[7], delta_softplus=True,
                                        backend=backend)
            runs.append(torch.autograd.grad(out, leaves, dout))
    finally:
        torch.use_deterministic_algorithms(False)
    for r in runs[1:]:
        for name, a, b in zip("u delta A B C D z bias".split(), runs[0], r):
            assert torch.isfinite(a).all() and torch.equal(a, b), name


# -- packed sequences, each from its own initial state ---------------------------------------
NAMES_H0 = ["u", "delta", "A", "B", "C", "D", "z", "bias", "initial_state"]


def _packed_alone(fn, leaves, bounds, kw):
    """Each sequence of a packed batch run alone (fn: one selective_scan call) from its row of
    the initial states: (out pieces, [last state or None for an empty sequence])."""
    u, d, A, B, C, D, z, bias, h0 = leaves
    outs, lasts = [], []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if a == b:
            lasts.append(None)
            continue
        o, h = fn(u[..., a:b], d[..., a:b], A, B[..., a:b], C[..., a:b], D, z[..., a:b], bias,
                  return_last_state=True, initial_state=h0[i:i + 1], **kw)
        outs.append(o)
        lasts.append(h[0])
    return outs, lasts


@pytest.fixture
def poison(monkeypatch):
    # every buffer a kernel must write starts as NaN, so an unwritten element fails the check
    monkeypatch.setenv("SSMGEN_POISON", "1")


@pytest.mark.parametrize("backend", ["reference"] + BACKENDS)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_packed_initial_states_equal_each_sequence_alone(backend, cplx, reverse, poison):
    """A packed batch whose sequences start from their own initial states (an empty one among
    them, sequences across chunk and block boundaries) gives each sequence's output, last state
    and gradients, the initial state's included, as if it ran alone from that state; an empty
    sequence's last state is its initial state, which takes the last state's gradient."""
    bounds = [0, 7, 7, 21, 22, 45]  # one empty, one of a single step; chunk 16, blocks of 8
    x = _inputs(1, 4, 45, 3, cplx, seed=11)
    h0 = torch.randn(5, 4, 3, dtype=x[2].dtype, generator=torch.Generator().manual_seed(12))
    x.append(h0.to(DEV))
    cu = torch.tensor(bounds, device=DEV)
    kw = dict(delta_softplus=True, reverse=reverse, backend=backend)
    if backend != "reference":
        kw["config"] = _cfg(backend)
    packed = _leaves(x)
    out, last = ssmgen.selective_scan(*packed[:8], return_last_state=True, cu_seqlens=cu,
                                      initial_state=packed[8], **kw)
    assert last.shape == (5, 4, 3) and last.dtype == x[2].dtype
    gen = torch.Generator().manual_seed(13)
    dout = torch.randn(out.shape, generator=gen).to(DEV)
    dlast = torch.randn(last.shape, dtype=last.dtype, generator=gen).to(DEV)
    gp = torch.autograd.grad([out, last], packed, [dout, dlast])
    alone = _leaves(x)
    outs, lasts = _packed_alone(ssmgen.selective_scan, alone, bounds, kw)
    for i, h in enumerate(lasts):
        want = x[8][i] if h is None else h  # an empty sequence: its initial state
        assert_close(f"last[{i}]", last[i], want.to(torch.complex128 if cplx else torch.float64),
                     torch.float32)
    assert_close("out", out, torch.cat(outs, -1).double(), torch.float32)
    ga = torch.autograd.grad([torch.cat(outs, -1)] + [h for h in lasts if h is not None], alone,
                             [dout] + [dlast[i] for i, h in enumerate(lasts) if h is not None])
    ga = list(ga)
    ga[8] = ga[8].clone()
    ga[8][1] = dlast[1]  # the empty sequence: its last state is its initial state
    for name, a, b in zip(NAMES_H0, gp, ga):
        assert_close("d" + name, a, b.to(torch.complex128 if b.is_complex() else torch.float64),
                     torch.float32)


@st.composite
def packed_cases(draw, **kw):
    """scan_cases' calls made packed (batch 1, boundaries anywhere, empty sequences included),
    every sequence starting from its own initial state."""
    c = draw(scan_cases(**kw))
    c.update(batch=1, varlen=True, initial_state=True)
    cuts = draw(st.lists(st.integers(0, c["L"]), min_size=0, max_size=4))
    c["cu_seqlens"] = [0] + sorted(cuts) + [c["L"]]
    return c


def _check_packed_case(c, device, seed):
    """The kernel against the float64 reference: output, last state (when returned) and every
    gradient, the initial states' included."""
    x = make_inputs(c, device, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    S = len(c["cu_seqlens"]) - 1
    sdt = torch.complex64 if c["complex"] else torch.float32
    x.append(torch.randn(S, c["dim"], c["N"], dtype=sdt, generator=gen).to(device))
    kw = dict(delta_softplus=c["delta_softplus"], return_last_state=c["return_last_state"],
              reverse=c["reverse"], cu_seqlens=torch.tensor(c["cu_seqlens"], device=device))

    def leaves():
        return [t.detach().clone().requires_grad_(True) if t is not None else None for t in x]

    mine, ref = leaves(), leaves()
    got = ssmgen.selective_scan(*mine[:8], initial_state=mine[8], backend=c["backend"],
                                config=config_of(c), **kw)
    want = selective_scan_ref(*ref[:8], initial_state=ref[8], **kw)
    got = got if c["return_last_state"] else (got,)
    want = want if c["return_last_state"] else (want,)
    dt = c["dtype"]
    for name, g, r in zip(("out", "last_state"), got, want):
        assert_close(name, g, r, dt)
    seeds = torch.Generator().manual_seed(seed + 1)
    # cotangents in the outputs' own dtypes (out: dt), the same values for the reference
    grads_out = [torch.randn(g.shape, dtype=torch.float32 if g.dtype == dt else g.dtype,
                             generator=seeds).to(device=device, dtype=g.dtype) for g in got]
    idx = [i for i, t in enumerate(x) if t is not None]
    gg = torch.autograd.grad(got, [mine[i] for i in idx], grads_out)
    gr = torch.autograd.grad(want, [ref[i] for i in idx], [g.to(o.dtype) for g, o in
                                                            zip(grads_out, want)])
    for i, a, b in zip(idx, gg, gr):
        assert a.dtype == x[i].dtype, NAMES_H0[i]
        assert_close("d" + NAMES_H0[i], a, b, dt)


# the interpreter runs tl.associative_scan as a Python fold: few examples here
@pytest.mark.interp
@settings(max_examples=int(os.environ.get("SSMGEN_VARLEN_EXAMPLES", "6")),
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # poison: the same for all
@given(c=packed_cases(), seed_=st.integers(0, 2**31 - 1))
def test_packed_initial_states_match_reference_interpreter(c, seed_, poison):
    _check_packed_case(c, "cpu", seed_)


@settings(max_examples=int(os.environ.get("SSMGEN_VARLEN_EXAMPLES", "20")))
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=5), cplx=st.booleans(),
       reverse=st.booleans(), N=st.integers(1, 4), seed_=st.integers(0, 2**31 - 1))
def test_reference_packed_initial_states_equal_each_sequence_alone(sizes, cplx, reverse, N,
                                                                  seed_):
    """The specification itself: the float64 reference on a packed batch with initial states
    equals the reference on each sequence alone from its state (outputs, last states, every
    gradient; an empty sequence passes its initial state and gradient through)."""
    bounds = [0]
    for n in sizes:
        bounds.append(bounds[-1] + n)
    if bounds[-1] == 0:
        bounds[-1] = 1  # u must have a step
    L, S = bounds[-1], len(bounds) - 1
    x = _inputs(1, 3, L, N, cplx, seed=seed_ % 1000, groups=1)
    x = [t.cpu() for t in x]
    x.append(torch.randn(S, 3, N, dtype=x[2].dtype, generator=torch.Generator().manual_seed(7)))
    kw = dict(delta_softplus=True, reverse=reverse)
    packed = _leaves(x)
    out, last = selective_scan_ref(*packed[:8], return_last_state=True, initial_state=packed[8],
                                   cu_seqlens=torch.tensor(bounds), **kw)
    gen = torch.Generator().manual_seed(seed_)
    dout = torch.randn(out.shape, dtype=torch.float64, generator=gen)
    dlast = torch.randn(last.shape, dtype=last.dtype, generator=gen)
    gp = torch.autograd.grad([out, last], packed, [dout, dlast])
    alone = _leaves(x)
    outs, lasts = _packed_alone(selective_scan_ref, alone, bounds, kw)
    ins = [o for o in outs] + [h for h in lasts if h is not None]
    gouts = [dout[..., a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    gouts += [dlast[i] for i, h in enumerate(lasts) if h is not None]
    ga = list(torch.autograd.grad(ins, alone, gouts, allow_unused=True))
    ga = [torch.zeros_like(t) if g is None else g for g, t in zip(ga, x)]
    for i, h in enumerate(lasts):
        if h is None:
            assert torch.equal(last[i], x[8][i].to(last.dtype)), "an empty sequence's state"
            ga[8][i] = dlast[i]
        else:
            assert torch.allclose(last[i], h, rtol=1e-12, atol=1e-12)
    assert torch.allclose(out, torch.cat(outs, -1), rtol=1e-12, atol=1e-12)
    for name, a, b in zip(NAMES_H0, gp, ga):  # both float32: rounding and order of the sums
        assert_close("d" + name, a, b, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_packed_initial_states_match_reference_cuda(backend, cplx, poison):
    @settings(max_examples=int(os.environ.get("SSMGEN_VARLEN_EXAMPLES", "25")))
    @given(c=packed_cases(big=True, cplx=cplx, backend=backend), seed_=st.integers(0, 2**31 - 1))
    def prop(c, seed_):
        _check_packed_case(c, "cuda", seed_)

    prop()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
def test_packed_initial_states_realistic_shape_cuda(backend, dtype, cplx, poison):
    """Chunked-prefill shaped: 7 sequences (one empty, one of one step, several across many
    chunks) from their own states, dim 256, d_state 16, every option, forward and reverse.
    Sequences stay near 1000 steps: at 1600 the CUDA backend's complex fp32 d(delta_bias) sits
    at the 1e-4 tolerance with or without initial states (its fp32 error grows with a
    sequence's length, measured on the H100: 1.0e-4 both ways; Triton's 1.3e-5)."""
    cu = [0, 300, 300, 301, 1324, 1500, 2560, 2600]
    kcfg = ({"fwd": {"block_l": 32, "block_d": 4}, "bwd": {"block_l": 32, "block_d": 2}}
            if backend == "triton" else {"fwd": {"threads": 128, "lpc": 4, "tl": 32},
                                         "bwd": {"threads": 64, "lpc": 8, "tl": 32, "tb": 4}})
    c = dict(dtype=dtype, complex=cplx, N=16, chunk_len=256, L=cu[-1], batch=1, dim=256,
             backend=backend, cu_seqlens=cu, reverse=False, **kcfg,
             B="var4", B_groups=1, B_complex_tensor=False, C="var4", C_groups=1,
             C_complex_tensor=False, D=True, z=True, delta_bias=True, delta_softplus=True,
             return_last_state=True, noncontig=False)
    _check_packed_case(c, "cuda", 4321)
    _check_packed_case(dict(c, reverse=True, cu_seqlens=[0, 1, 1000, 1000, 1800, 2600]), "cuda",
                       4322)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("where", ["u", "initial_state"])
def test_nonfinite_packed_sequence_with_initial_states_stays_in_it(backend, reverse, where,
                                                                     poison):
    """A NaN inside one packed sequence, or in its initial state: every output, last state and
    gradient is finite exactly where the float64 reference's is (a sequence start replaces the
    state by the sequence's own, and the adjoint stops there, by a select: nothing crosses)."""
    from test_input_faults import _finite_like_the_reference, scan_args

    a = scan_args(b=1, L=11, N=3)
    a["cu_seqlens"] = torch.tensor([0, 4, 7, 11])  # starts at a block's first step and inside one
    a["initial_state"] = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(1))
    if where == "u":
        a["u"] = a["u"].clone()
        a["u"][0, :, 5] = float("nan")  # inside sequence 1 (neither its first nor last step)
    else:
        a["initial_state"][1] = float("nan")
    _finite_like_the_reference(a, {"reverse": reverse}, backend)
