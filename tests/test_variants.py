"""Variants beyond mamba-ssm's selective_scan_fn: initial state and the last state's gradient,
packed sequences (cu_seqlens), reverse scans, d_state up to 512.

The property tests of test_scan_numerics draw these variants against the float64 reference;
here: the properties users rely on, checked kernel against kernel (chunked training over a long
sequence equals one call; a packed batch equals each sequence alone; reverse equals the forward
scan of the flipped sequence), and the input errors. On CPU the kernels run through Triton's
interpreter; on a GPU the same tests run on both backends.
"""
import pytest
import torch

import ssmgen
from ssmgen.numerics import assert_close

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


def test_cu_seqlens_dtype_and_initial_state_with_varlen():
    u, d, A, B, C = [t[:1] if t.dim() > 2 else t for t in _small()]
    with pytest.raises(TypeError, match=r"cu_seqlens must be int32 or int64"):
        ssmgen.selective_scan(u, d, A, B, C, cu_seqlens=torch.tensor([0.0, 9.0], device=DEV))
    with pytest.raises(ValueError, match=r"initial_state with cu_seqlens is not supported"):
        ssmgen.selective_scan(u, d, A, B, C, cu_seqlens=torch.tensor([0, 9], device=DEV),
                              initial_state=torch.zeros(1, 4, 3, device=DEV))


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
