"""Mamba-2 SSD: the chunked PyTorch path against the float64 reference (outputs, final states and
every gradient), the reference against the Mamba-1 scan, chunk-size and segment invariances, and
the input checks."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import ssmgen
from ssmgen.numerics import assert_close
from ssmgen.ssd import mamba_chunk_scan_combined, normalize_ssd, ssd_chunked, ssd_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
INF = float("inf")
HEADS_GROUPS = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 3), (4, 1), (4, 2), (4, 4)]


def make_inputs(seed, b, L, H, P, N, G, dtype=F32, dt_dtype=None, D=None, z=False, dt_bias=False,
                h0=False, softplus=False):
    """Fresh random inputs, all leaves with requires_grad. dt positive-ish (pre-softplus: any
    sign), A negative. D: None, "h" (heads,) or "hp" (heads, headdim)."""
    g = torch.Generator().manual_seed(seed)

    def rn(*s, dtype=dtype):
        return torch.randn(*s, generator=g).to(dtype)

    if softplus:
        dt = torch.randn(b, L, H, generator=g) - 1.0
    else:
        dt = 0.05 + 0.5 * torch.rand(b, L, H, generator=g)
    a = dict(x=rn(b, L, H, P), dt=dt.to(dt_dtype or dtype),
             A=-torch.exp(2 * torch.rand(H, generator=g) - 1.5),
             B=rn(b, L, G, N), C=rn(b, L, G, N))
    if D == "h":
        a["D"] = rn(H, dtype=F32)
    elif D == "hp":
        a["D"] = rn(H, P, dtype=F32)
    if z:
        a["z"] = rn(b, L, H, P)
    if dt_bias:
        a["dt_bias"] = 0.1 * rn(H, dtype=F32)
    if h0:
        a["initial_states"] = rn(b, H, P, N, dtype=F32)
    for t in a.values():
        t.requires_grad_(True)
    return a


def cotangent(shape, g, dtype):
    """Random float64 values that dtype holds exactly: the cotangent of a half-precision out
    reaches a kernel in that precision, so the reference gets the same values (else a sum
    like dD = sum dout x compares rounded against unrounded terms: seen 3.6e-3 off in fp16)."""
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype).double()


def run_with_grads(fn, a, seed, return_final):
    """fn(**a) -> (out, final or None, {name: grad}) for fixed random cotangents."""
    res = fn(**a, return_final_states=return_final)
    out, fin = res if return_final else (res, None)
    g = torch.Generator().manual_seed(seed + 1)
    loss = (out.double() * cotangent(out.shape, g, a["x"].dtype).to(out.device)).sum()
    if return_final:
        loss = loss + (fin.double() * torch.randn(fin.shape, generator=g, dtype=torch.float64)
                       .to(fin.device)).sum()
    grads = torch.autograd.grad(loss, list(a.values()))
    return out, fin, dict(zip(a, grads))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 2), L=st.integers(1, 70), Q=st.sampled_from([8, 16, 32]),
       HG=st.sampled_from(HEADS_GROUPS), P=st.integers(1, 8), N=st.integers(1, 16),
       D=st.sampled_from([None, "h", "hp"]), z=st.booleans(), dt_bias=st.booleans(),
       softplus=st.booleans(), dt_limit=st.sampled_from([(0.0, INF), (0.1, 0.4), (0.0, 0.3)]),
       h0=st.booleans(), ret_final=st.booleans(), dtype=st.sampled_from([F32, BF16, F16]),
       dt_f32=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_chunked_matches_reference(b, L, Q, HG, P, N, D, z, dt_bias, softplus, dt_limit, h0,
                                   ret_final, dtype, dt_f32, seed):
    H, G = HG
    a = make_inputs(seed, b, L, H, P, N, G, dtype, F32 if dt_f32 else dtype, D=D, z=z,
                    dt_bias=dt_bias, h0=h0, softplus=softplus)
    opts = dict(dt_softplus=softplus, dt_limit=dt_limit)
    out, fin, grads = run_with_grads(lambda **k: ssd_chunked(chunk_size=Q, **k, **opts), a, seed,
                                     ret_final)
    rout, rfin, rgrads = run_with_grads(lambda **k: ssd_ref(**k, **opts), a, seed, ret_final)
    assert out.dtype == F32 and rout.dtype == torch.float64
    # the output is compared as the public call returns it: in x's dtype
    assert_close("out", out.to(dtype), rout.to(dtype), dtype)
    if ret_final:
        assert fin.dtype == F32 and fin.shape == (b, H, P, N)
        assert_close("final_states", fin, rfin, dtype)
    assert set(grads) >= {"x", "dt", "A", "B", "C"}
    for name in grads:
        assert grads[name].dtype == a[name].dtype
        assert_close(f"d{name}", grads[name], rgrads[name], dtype)


def to_mamba1(a, H, P):
    """SSD inputs -> selective_scan inputs: channel h*P + p is head h's p-th column, so
    dim = H*P, A[(h, p), n] = A_h, delta = dt_h on each of the head's channels, B/C (batch,
    groups, N, L) (channel h*P + p lies in group h // (H/G), the head's group)."""
    b, L = a["x"].shape[:2]
    N = a["B"].shape[-1]

    def chan(t):  # (b, L, H, P) -> (b, H*P, L)
        return t.reshape(b, L, H * P).transpose(1, 2)

    def per_channel(v):  # (H,) or (H, P) -> (H*P,)
        return (v[:, None].expand(H, P) if v.dim() == 1 else v).reshape(H * P)

    m = dict(u=chan(a["x"]), delta=chan(a["dt"][..., None].expand(b, L, H, P)),
             A=a["A"][:, None, None].expand(H, P, N).reshape(H * P, N),
             B=a["B"].permute(0, 2, 3, 1), C=a["C"].permute(0, 2, 3, 1))
    if "D" in a:
        m["D"] = per_channel(a["D"])
    if "z" in a:
        m["z"] = chan(a["z"])
    if "dt_bias" in a:
        m["delta_bias"] = per_channel(a["dt_bias"])
    if "initial_states" in a:
        m["initial_state"] = a["initial_states"].reshape(b, H * P, N)
    return m


@settings(max_examples=12, deadline=None)
@given(b=st.integers(1, 2), L=st.integers(1, 20), HG=st.sampled_from(HEADS_GROUPS),
       P=st.integers(1, 3), N=st.integers(1, 6), D=st.sampled_from([None, "h", "hp"]),
       z=st.booleans(), dt_bias=st.booleans(), softplus=st.booleans(), h0=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_reference_is_mamba1_scan_with_scalar_A(b, L, HG, P, N, D, z, dt_bias, softplus, h0, seed):
    """SSD is the Mamba-1 scan with A constant along N (and dt shared by a head's channels);
    headdim=1 is one channel per head. dt' stays positive here: Mamba-1 does not clamp."""
    H, G = HG
    a = make_inputs(seed, b, L, H, P, N, G, D=D, z=z, h0=h0, softplus=softplus)
    if dt_bias:
        a["dt_bias"] = 0.1 * torch.rand(H, generator=torch.Generator().manual_seed(seed))
    a = {k: v.detach() for k, v in a.items()}
    out, fin = ssd_ref(**a, dt_softplus=softplus, return_final_states=True)
    m = to_mamba1(a, H, P)
    out1, last1 = ssmgen.selective_scan(**m, delta_softplus=softplus, return_last_state=True,
                                        backend="reference")
    assert_close("out", out1.transpose(1, 2).reshape(b, L, H, P), out, F32)
    assert_close("final_states", last1.reshape(b, H, P, N), fin, F32)


def test_one_chunk_equals_many_chunks():
    a = make_inputs(3, 2, 50, 4, 3, 5, 2, D="hp", z=True, dt_bias=True, h0=True, softplus=True)
    kw = dict(dt_softplus=True, return_final_states=True)
    out, fin = ssd_chunked(**a, chunk_size=64, **kw)  # chunk_size >= L: one chunk
    for Q in (8, 16, 5, 50, 1):  # 5: not a power of two; 1: the recurrence itself
        o, f = ssd_chunked(**a, chunk_size=Q, **kw)
        assert_close(f"out (chunk {Q})", o, out, F32)
        assert_close(f"final_states (chunk {Q})", f, fin, F32)


@pytest.mark.parametrize("split", [1, 16, 23])
def test_segments_chain_like_one_call(split):
    """Chunked training: segment 2 starts from segment 1's final states; outputs, final states
    and every gradient equal those of one call over the whole sequence."""
    a = make_inputs(5, 2, 40, 4, 3, 6, 2, D="h", z=True, dt_bias=True, h0=True, softplus=True)
    kw = dict(chunk_size=16, dt_softplus=True, return_final_states=True)
    whole, fin = ssd_chunked(**a, **kw)
    seq = ("x", "dt", "B", "C", "z")
    one = {k: (v[:, :split] if k in seq else v) for k, v in a.items()}
    two = {k: (v[:, split:] if k in seq else v) for k, v in a.items() if k != "initial_states"}
    o1, f1 = ssd_chunked(**one, **kw)
    o2, f2 = ssd_chunked(**two, initial_states=f1, **kw)
    out = torch.cat([o1, o2], dim=1)
    assert_close("out", out, whole, F32)
    assert_close("final_states", f2, fin, F32)
    g = torch.Generator().manual_seed(0)
    gout, gfin = torch.randn(whole.shape, generator=g), torch.randn(fin.shape, generator=g)
    names = list(a)
    ref = torch.autograd.grad((whole * gout).sum() + (fin * gfin).sum(), [a[k] for k in names])
    got = torch.autograd.grad((out * gout).sum() + (f2 * gfin).sum(), [a[k] for k in names])
    for k, gr, gg in zip(names, ref, got):
        assert_close(f"d{k}", gg, gr, F32)


def test_public_call_backends_and_dtypes():
    a = make_inputs(7, 2, 33, 4, 4, 8, 1, dtype=BF16, dt_dtype=F32, D="h", z=True, dt_bias=True,
                    h0=True, softplus=True)
    a = {k: v.detach() for k, v in a.items()}
    res = {}
    for be in (None, "torch", "reference"):
        out, fin = ssmgen.mamba_chunk_scan_combined(**a, chunk_size=16, dt_softplus=True,
                                                    return_final_states=True, backend=be)
        assert out.dtype == BF16 and out.shape == a["x"].shape
        assert fin.dtype == F32 and fin.shape == (2, 4, 4, 8)
        res[be] = (out, fin)
    assert torch.equal(res[None][0], res["torch"][0])
    assert_close("out", res["torch"][0], res["reference"][0], BF16)
    assert_close("final_states", res["torch"][1], res["reference"][1], BF16)
    out = mamba_chunk_scan_combined(a["x"], a["dt"], a["A"], a["B"], a["C"], 16)
    assert out.dtype == BF16 and out.shape == a["x"].shape


def test_negative_dt_is_clamped_at_zero_by_default():
    """As in mamba-ssm's fused kernel (min(max(dt, lo), hi) always): with the default
    dt_limit=(0, inf) a negative dt' is zero, a step that neither decays nor adds."""
    a = {k: v.detach() for k, v in make_inputs(9, 1, 12, 2, 2, 3, 1).items()}
    a["dt"][:, 4:7] = -0.3
    zeroed = dict(a, dt=a["dt"].clamp(min=0))
    for fn in (lambda **k: ssd_chunked(**k, chunk_size=8), ssd_ref):
        assert_close("out", fn(**a), fn(**zeroed), F32)


def test_matches_peer_ssd_minimal():
    """mamba-ssm's own minimal SSD (its paper's Listing 1), where importable."""
    from ssmgen.bench import peer_import

    mod = peer_import("mamba_ssm.modules.ssd_minimal")
    if mod is None:
        pytest.skip("mamba_ssm.modules.ssd_minimal not importable (needs mamba-ssm and einops)")
    b, L, H, P, N, Q = 2, 48, 4, 3, 5, 16
    a = {k: v.detach() for k, v in make_inputs(11, b, L, H, P, N, H, h0=True).items()}
    d = {k: v.double() for k, v in a.items()}
    y, fin = mod.ssd_minimal_discrete(d["x"] * d["dt"][..., None], d["A"] * d["dt"], d["B"],
                                      d["C"], Q, initial_states=d["initial_states"][:, None])
    out, rfin = ssd_ref(**a, return_final_states=True)
    assert_close("out", y, out, F32)
    assert_close("final_states", fin, rfin, F32)


# -- packed sequences: seq_idx, cu_seqlens, return_varlen_states ----------------------------------
SEQ = ("x", "dt", "B", "C", "z")


def packed_inputs(seed, lens, ids, H, P, N, G, dtype=F32, **opts):
    """Batch-1 inputs packing sequences of lengths lens (0: an empty sequence) with seq_idx ids
    (one per sequence, increasing), and cu_seqlens (int32)."""
    a = make_inputs(seed, 1, sum(lens), H, P, N, G, dtype, **opts)
    seq_idx = torch.tensor(ids, dtype=torch.int32).repeat_interleave(torch.tensor(lens))[None]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    return a, seq_idx, cu


def each_alone(fn, a, seq_idx, cu, seed):
    """fn(**inputs, return_final_states=True) on each sequence by itself, starting from
    initial_states when it starts at step 0 with seq_idx 0 (else from zero). Returns (out,
    final state of the last non-empty sequence, each sequence's final state (zero if empty),
    {name: grad}), the cotangents those of run_with_grads(..., seed, True) on the packed call."""
    L, H, P = a["x"].shape[1:]
    N = a["B"].shape[-1]
    g = torch.Generator().manual_seed(seed + 1)
    gout = cotangent((1, L, H, P), g, a["x"].dtype)
    gfin = torch.randn((1, H, P, N), generator=g, dtype=torch.float64)
    v = cu.tolist()
    spans = list(zip(v, v[1:]))
    last = max(i for i, (s, e) in enumerate(spans) if e > s)
    outs, states, loss = [], [], 0.0
    for i, (s, e) in enumerate(spans):
        if e == s:
            states.append(torch.zeros(H, P, N, dtype=torch.float64))
            continue
        part = {k: (t[:, s:e] if k in SEQ else t) for k, t in a.items() if k != "initial_states"}
        if s == 0 and seq_idx[0, 0] == 0 and "initial_states" in a:
            part["initial_states"] = a["initial_states"]
        o, f = fn(**part, return_final_states=True)
        outs.append(o)
        states.append(f[0].double())
        loss = loss + (o.double() * gout[:, s:e]).sum()
        if i == last:
            final = f
            loss = loss + (f.double() * gfin).sum()
    grads = torch.autograd.grad(loss, list(a.values()), allow_unused=True)
    grads = {k: torch.zeros_like(a[k]) if gr is None else gr for k, gr in zip(a, grads)}
    return torch.cat(outs, 1), final, torch.stack(states), grads


LENS = st.lists(st.integers(0, 14), min_size=1, max_size=5).filter(lambda v: sum(v) >= 1)
IDS = st.builds(lambda first, gap: (first, gap), st.sampled_from([0, 0, 1, 5]),
                st.sampled_from([1, 3]))


def ids_of(lens, first_gap):
    first, gap = first_gap
    return [first + gap * i for i in range(len(lens))]


@settings(max_examples=25, deadline=None)
@given(lens=LENS, ids=IDS, Q=st.sampled_from([1, 4, 8, 16]), HG=st.sampled_from(HEADS_GROUPS),
       P=st.integers(1, 6), N=st.integers(1, 8), D=st.sampled_from([None, "h", "hp"]),
       z=st.booleans(), dt_bias=st.booleans(), softplus=st.booleans(), h0=st.booleans(),
       dtype=st.sampled_from([F32, BF16, F16]), seed=st.integers(0, 2**31 - 1))
def test_packed_equals_each_sequence_alone(lens, ids, Q, HG, P, N, D, z, dt_bias, softplus, h0,
                                           dtype, seed):
    """The property seq_idx stands for: out, the final state and every gradient of one packed
    call equal those of running each sequence by itself (the reference's, float64), for the
    reference and the chunked path; return_varlen_states gives each sequence's own final state."""
    H, G = HG
    a, seq_idx, cu = packed_inputs(seed, lens, ids_of(lens, ids), H, P, N, G, dtype, D=D, z=z,
                                   dt_bias=dt_bias, h0=h0, softplus=softplus)
    opts = dict(dt_softplus=softplus)
    rout, rfin, rstates, rgrads = each_alone(lambda **k: ssd_ref(**k, **opts), a, seq_idx, cu,
                                             seed)
    for name, fn in (("reference", lambda **k: ssd_ref(**k, seq_idx=seq_idx, **opts)),
                     ("chunked", lambda **k: ssd_chunked(**k, chunk_size=Q, seq_idx=seq_idx,
                                                         **opts))):
        out, fin, grads = run_with_grads(fn, a, seed, True)
        tol = F32 if name == "reference" else dtype
        assert_close(f"{name} out", out.to(dtype), rout.to(dtype), tol)
        assert_close(f"{name} final_states", fin, rfin, tol)
        for k in grads:
            assert_close(f"{name} d{k}", grads[k], rgrads[k], tol)
    d = {k: t.detach() for k, t in a.items()}
    for name, fn in (("reference", ssd_ref), ("chunked", lambda **k: ssd_chunked(**k,
                                                                                chunk_size=Q))):
        _, varlen = fn(**d, seq_idx=seq_idx, cu_seqlens=cu, return_varlen_states=True, **opts)
        assert varlen.shape == (len(lens), H, P, N)
        assert_close(f"{name} varlen_states", varlen, rstates, F32 if name == "reference"
                     else dtype)


def test_packed_rows_of_a_batch_are_independent():
    """Batch rows packed differently (seq_idx per row): the chunked path equals the reference."""
    a = make_inputs(4, 2, 37, 4, 3, 5, 2, D="hp", z=True, dt_bias=True, h0=True, softplus=True)
    seq_idx = torch.zeros(2, 37, dtype=torch.int32)
    seq_idx[0, 9:] = 1
    seq_idx[0, 10:] = 2
    seq_idx[1] = 3  # one sequence whose seq_idx is not 0: no initial state
    seq_idx[1, 20:] = 4
    opts = dict(seq_idx=seq_idx, dt_softplus=True)
    out, fin, grads = run_with_grads(lambda **k: ssd_chunked(**k, chunk_size=8, **opts), a, 1,
                                     True)
    rout, rfin, rgrads = run_with_grads(lambda **k: ssd_ref(**k, **opts), a, 1, True)
    assert_close("out", out, rout, F32)
    assert_close("final_states", fin, rfin, F32)
    for k in grads:
        assert_close(f"d{k}", grads[k], rgrads[k], F32)
    assert torch.equal(grads["initial_states"][1], torch.zeros_like(grads["initial_states"][1]))


def test_initial_states_belong_to_sequence_0():
    """As in mamba-ssm (seq_idx is 0 before step 0): the initial state starts the first packed
    sequence when its seq_idx is 0 and is dropped otherwise."""
    a = {k: v.detach() for k, v in make_inputs(8, 1, 12, 2, 2, 3, 1, h0=True).items()}
    no_h0 = {k: v for k, v in a.items() if k != "initial_states"}
    for fn in (ssd_ref, lambda **k: ssd_chunked(**k, chunk_size=4)):
        for first, same in ((0, False), (2, True)):
            seq_idx = torch.full((1, 12), first, dtype=torch.int32)
            seq_idx[:, 7:] += 1
            with_h0, without = fn(**a, seq_idx=seq_idx), fn(**no_h0, seq_idx=seq_idx)
            assert torch.equal(with_h0, without) == same
            assert_close("out after the first sequence", with_h0[:, 7:], without[:, 7:], F32)


def test_public_call_packed_returns():
    """The peer's return order and dtypes: (out, varlen_states), (out, final_states,
    varlen_states); varlen_states in x's dtype and without gradient, while out still
    differentiates; cu_seqlens is ignored without return_varlen_states."""
    a, seq_idx, cu = packed_inputs(2, [6, 0, 9, 4], [0, 1, 2, 3], 4, 3, 5, 2, BF16, D="h",
                                   z=True, h0=True)
    kw = dict(chunk_size=8, seq_idx=seq_idx, cu_seqlens=cu)
    out, varlen = mamba_chunk_scan_combined(**a, **kw, return_varlen_states=True)
    assert out.dtype == BF16 and varlen.dtype == BF16 and varlen.shape == (4, 4, 3, 5)
    assert not varlen.requires_grad and out.requires_grad
    out.float().sum().backward()
    out2, fin, varlen2 = mamba_chunk_scan_combined(**a, **kw, return_final_states=True,
                                                   return_varlen_states=True)
    assert fin.dtype == F32 and torch.equal(varlen2, varlen) and torch.equal(out2, out)
    assert_close("last varlen state", varlen[-1], fin[0], BF16)
    assert torch.equal(mamba_chunk_scan_combined(**a, **kw), out)
    ref_out, ref_varlen = mamba_chunk_scan_combined(**a, **kw, return_varlen_states=True,
                                                    backend="reference")
    assert_close("out", out, ref_out, BF16)
    assert_close("varlen_states", varlen, ref_varlen, BF16)


# -- input checks ------------------------------------------------------------------------------
b_, L_, H_, P_, N_, G_ = 2, 10, 4, 3, 5, 2


def valid():
    a = {k: v.detach() for k, v in make_inputs(0, b_, L_, H_, P_, N_, G_, D="h", z=True,
                                                dt_bias=True, h0=True).items()}
    return dict(a, chunk_size=8)


BAD = [  # (name, change to the valid arguments, error, message pattern)
    ("x not a tensor", dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
    ("x float64", dict(x=torch.randn(b_, L_, H_, P_, dtype=torch.float64)), TypeError, "^x "),
    ("x int", dict(x=torch.ones(b_, L_, H_, P_, dtype=torch.int32)), TypeError, "^x "),
    ("x rank 3", dict(x=torch.randn(b_, L_, H_ * P_)), ValueError, "^x "),
    ("x empty", dict(x=torch.randn(b_, 0, H_, P_)), ValueError, "^x "),
    ("dt per channel", dict(dt=torch.rand(b_, L_, H_, P_)), ValueError, "^dt "),
    ("dt float16", dict(dt=torch.rand(b_, L_, H_).half()), TypeError, "^dt "),
    ("A Mamba-1 shape", dict(A=-torch.rand(H_, N_)), ValueError, "^A "),
    ("A int", dict(A=-torch.ones(H_, dtype=torch.int64)), TypeError, "^A "),
    ("B rank 3", dict(B=torch.randn(b_, L_, N_)), ValueError, "^B "),
    ("B groups", dict(B=torch.randn(b_, L_, 3, N_), C=torch.randn(b_, L_, 3, N_)), ValueError,
     "^B: groups=3 must divide heads=4"),
    ("B dtype", dict(B=torch.randn(b_, L_, G_, N_).bfloat16()), TypeError, "^B "),
    ("B seqlen", dict(B=torch.randn(b_, L_ + 1, G_, N_)), ValueError, "^B "),
    ("d_state too large", dict(B=torch.randn(b_, L_, G_, 513), C=torch.randn(b_, L_, G_, 513),
                               initial_states=None), ValueError, "^B: d_state"),
    ("C shape", dict(C=torch.randn(b_, L_, G_, N_ + 1)), ValueError, "^C "),
    ("C dtype", dict(C=torch.randn(b_, L_, G_, N_).half()), TypeError, "^C "),
    ("D shape", dict(D=torch.randn(P_)), ValueError, "^D "),
    ("D int", dict(D=torch.ones(H_, dtype=torch.int32)), TypeError, "^D "),
    ("z shape", dict(z=torch.randn(b_, L_, H_, P_ + 1)), ValueError, "^z "),
    ("z dtype", dict(z=torch.randn(b_, L_, H_, P_).bfloat16()), TypeError, "^z "),
    ("dt_bias shape", dict(dt_bias=torch.rand(H_, P_)), ValueError, "^dt_bias "),
    ("initial_states shape", dict(initial_states=torch.randn(b_, H_, P_)), ValueError,
     "^initial_states "),
    ("initial_states float64", dict(initial_states=torch.randn(b_, H_, P_, N_).double()),
     TypeError, "^initial_states "),
    ("dt on another device", dict(dt=torch.empty(b_, L_, H_, device="meta")), ValueError,
     "^dt is on meta"),
    ("initial_states on another device",
     dict(initial_states=torch.empty(b_, H_, P_, N_, device="meta")), ValueError,
     "^initial_states is on meta"),
    ("chunk_size 0", dict(chunk_size=0), ValueError, "^chunk_size"),
    ("chunk_size float", dict(chunk_size=16.0), TypeError, "^chunk_size"),
    ("chunk_size bool", dict(chunk_size=True), TypeError, "^chunk_size"),
    ("chunk_size None", dict(chunk_size=None), TypeError, "^chunk_size"),
    ("dt_softplus str", dict(dt_softplus="yes"), TypeError, "^dt_softplus"),
    ("dt_limit reversed", dict(dt_limit=(1.0, 0.0)), ValueError, "^dt_limit"),
    ("dt_limit one number", dict(dt_limit=(0.1,)), ValueError, "^dt_limit"),
    ("dt_limit nan", dict(dt_limit=(math.nan, 1.0)), ValueError, "^dt_limit"),
    ("dt_limit scalar", dict(dt_limit=0.5), ValueError, "^dt_limit"),
    ("return_final_states int", dict(return_final_states=1), TypeError, "^return_final_states"),
    ("seq_idx not a tensor", dict(seq_idx=[0] * L_), TypeError, "^seq_idx must be a torch.Tensor"),
    ("seq_idx int64", dict(seq_idx=torch.zeros(b_, L_, dtype=torch.int64)), TypeError,
     "^seq_idx must be int32"),
    ("seq_idx shape", dict(seq_idx=torch.zeros(1, L_, dtype=torch.int32)), ValueError,
     r"^seq_idx must have shape \(batch, seqlen\)"),
    ("seq_idx on another device", dict(seq_idx=torch.empty(b_, L_, dtype=torch.int32,
                                                           device="meta")), ValueError,
     "^seq_idx is on meta"),
    ("seq_idx decreasing", dict(seq_idx=torch.tensor([[0] * 5 + [1] * 5, [1] * 5 + [0] * 5],
                                                     dtype=torch.int32)), ValueError,
     "^seq_idx must never decrease"),
    ("cu_seqlens 2-D", dict(cu_seqlens=torch.tensor([[0, L_]])), ValueError,
     "^cu_seqlens must be 1-D"),
    ("cu_seqlens one entry", dict(cu_seqlens=torch.tensor([0])), ValueError,
     "^cu_seqlens must be 1-D"),
    ("cu_seqlens float", dict(cu_seqlens=torch.tensor([0.0, L_])), TypeError,
     "^cu_seqlens must be int32 or int64"),
    ("cu_seqlens on another device", dict(cu_seqlens=torch.empty(2, dtype=torch.int32,
                                                                 device="meta")), ValueError,
     "^cu_seqlens is on meta"),
    ("return_varlen_states without cu_seqlens", dict(return_varlen_states=True), ValueError,
     "^return_varlen_states=True needs cu_seqlens"),
    ("return_varlen_states with batch 2", dict(return_varlen_states=True,
                                               cu_seqlens=torch.tensor([0, L_])), ValueError,
     "^return_varlen_states needs packed inputs with batch = 1"),
    ("return_varlen_states int", dict(return_varlen_states=1), TypeError,
     "^return_varlen_states must be a bool"),
]


@pytest.mark.parametrize("change,error,pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_argument_raises_naming_it(change, error, pattern):
    args = dict(valid(), **change)
    with pytest.raises(error, match=pattern):
        normalize_ssd(**args)
    with pytest.raises(error, match=pattern):
        mamba_chunk_scan_combined(**args)


def valid_packed():
    """Batch 1, sequences [0, 4) and [4, 10)."""
    a = {k: v[:1] if k in SEQ + ("initial_states",) else v for k, v in valid().items()}
    seq_idx = torch.tensor([[0] * 4 + [1] * 6], dtype=torch.int32)
    return dict(a, seq_idx=seq_idx, cu_seqlens=torch.tensor([0, 4, L_], dtype=torch.int32),
                return_varlen_states=True)


BAD_PACKED = [  # changes to valid_packed(), all ValueError
    ("cu_seqlens not from 0", dict(cu_seqlens=torch.tensor([1, 4, L_])),
     "^cu_seqlens must start at 0, never decrease and end at L=10; got \\[1, 4, 10\\]"),
    ("cu_seqlens not to L", dict(cu_seqlens=torch.tensor([0, 4, L_ - 1])),
     "^cu_seqlens must start at 0"),
    ("cu_seqlens decreasing", dict(cu_seqlens=torch.tensor([0, 6, 4, L_])),
     "^cu_seqlens must start at 0"),
    ("cu_seqlens elsewhere than seq_idx", dict(cu_seqlens=torch.tensor([0, 5, L_])),
     "^cu_seqlens must mark the sequences seq_idx marks"),
    ("cu_seqlens misses a sequence", dict(cu_seqlens=torch.tensor([0, L_])),
     "^cu_seqlens must mark the sequences seq_idx marks"),
    ("cu_seqlens of many sequences without seq_idx", dict(seq_idx=None),
     "^cu_seqlens must mark the sequences seq_idx marks .*without seq_idx there is one sequence"),
]


@pytest.mark.parametrize("change,pattern", [c[1:] for c in BAD_PACKED],
                         ids=[c[0] for c in BAD_PACKED])
def test_bad_packing_raises_naming_it(change, pattern):
    args = dict(valid_packed(), **change)
    for fn in (normalize_ssd, mamba_chunk_scan_combined):
        with pytest.raises(ValueError, match=pattern):
            fn(**args)


def test_packing_that_passes_the_checks():
    """Empty sequences anywhere; one sequence without seq_idx; cu_seqlens ignored without
    return_varlen_states (the peer ignores it then)."""
    a = valid_packed()
    for cu in ([0, 0, 4, 4, L_], [0, 4, L_, L_]):
        _, varlen = mamba_chunk_scan_combined(**dict(a, cu_seqlens=torch.tensor(cu)))
        assert varlen.shape == (len(cu) - 1, H_, P_, N_)
        empty = varlen[torch.tensor(cu[1:]) == torch.tensor(cu[:-1])]
        assert len(empty) >= 1 and not empty.any()
    _, varlen = mamba_chunk_scan_combined(**dict(a, seq_idx=None,
                                                 cu_seqlens=torch.tensor([0, 0, L_])))
    assert varlen.shape == (2, H_, P_, N_)
    out = mamba_chunk_scan_combined(**dict(a, return_varlen_states=False,
                                           cu_seqlens=torch.tensor([3, 1])))
    assert out.shape == a["x"].shape


@pytest.mark.parametrize("backend", ["cuda", "ref", ""])
def test_unknown_backend_raises(backend):
    with pytest.raises(ValueError, match="^backend"):
        mamba_chunk_scan_combined(**valid(), backend=backend)


def test_permissive_dtypes():
    """What mamba-ssm takes and ssmgen accepts too: dt float32 with bf16 x; A, D, dt_bias,
    initial_states in a half type (read exactly as float32)."""
    a = valid()
    a.update(x=a["x"].bfloat16(), B=a["B"].bfloat16(), C=a["C"].bfloat16(), z=a["z"].bfloat16())
    out = mamba_chunk_scan_combined(**a)
    assert out.dtype == BF16
    halves = {k: a[k].bfloat16() for k in ("A", "D", "dt_bias", "initial_states")}
    out2 = mamba_chunk_scan_combined(**dict(a, **halves))
    ref = mamba_chunk_scan_combined(**dict(a, **{k: v.float() for k, v in halves.items()}))
    assert torch.equal(out2, ref)
