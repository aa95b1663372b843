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


def run_with_grads(fn, a, seed, return_final):
    """fn(**a) -> (out, final or None, {name: grad}) for fixed random cotangents."""
    res = fn(**a, return_final_states=return_final)
    out, fin = res if return_final else (res, None)
    g = torch.Generator().manual_seed(seed + 1)
    loss = (out.double() * torch.randn(out.shape, generator=g, dtype=torch.float64)
            .to(out.device)).sum()
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
    ("seq_idx", dict(seq_idx=torch.zeros(b_, L_, dtype=torch.int32)), ValueError,
     "^seq_idx is not supported yet"),
    ("cu_seqlens", dict(cu_seqlens=torch.tensor([0, L_])), ValueError,
     "^cu_seqlens is not supported yet"),
    ("return_varlen_states", dict(return_varlen_states=True), ValueError,
     "^return_varlen_states is not supported yet"),
]


@pytest.mark.parametrize("change,error,pattern", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_argument_raises_naming_it(change, error, pattern):
    args = dict(valid(), **change)
    with pytest.raises(error, match=pattern):
        normalize_ssd(**args)
    with pytest.raises(error, match=pattern):
        mamba_chunk_scan_combined(**args)


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
