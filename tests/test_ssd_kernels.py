"""Mamba-2 SSD on the generated Triton kernels (backends/triton_ssd.py) against the float64
reference: output, final states and every gradient, over random variants, sizes and kernel
configs; packed sequences (seq_idx) against each sequence run alone, and the varlen states.
On a machine without CUDA through Triton's interpreter (fp32 and fp16: the interpreter
of Triton 3.6 computes tl.dot of bfloat16 operands wrongly, see
test_interpreter_bf16_dot_is_broken); bf16 and the suite-sized blocks run on the GPU."""
import os

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import ssmgen
from ssmgen.backends import triton_ssd
from ssmgen.numerics import FLOOR, assert_close
from ssmgen.spec import SSDSpec
from ssmgen.ssd import _dt, _normalize, ssd_ref
from ssmgen.ssd_kernels import spec_of
from test_ssd import (BF16, F16, F32, HEADS_GROUPS, IDS, INF, each_alone, ids_of, make_inputs,
                      packed_inputs, run_with_grads)

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    # every buffer a kernel must write starts as NaN, so an unwritten element fails the check
    monkeypatch.setenv("SSMGEN_POISON", "1")


def to_dev(a):
    return {k: v.detach().to(DEV).requires_grad_(True) for k, v in a.items()}


def on_dev(opts):
    return {k: v.to(DEV) if isinstance(v, torch.Tensor) else v for k, v in opts.items()}


def check(a, opts, ret_final, config, dtype, seed, ref=None, backend="triton"):
    """The kernels against the reference with the same arguments (opts: seq_idx too), or
    against ref = (out, final, grads) when given."""
    kern = run_with_grads(lambda **k: ssmgen.mamba_chunk_scan_combined(
        chunk_size=64, **k, **on_dev(opts), backend=backend, config=config), to_dev(a), seed,
        ret_final)
    ref = ref or run_with_grads(lambda **k: ssd_ref(**k, **opts), a, seed, ret_final)
    (out, fin, grads), (rout, rfin, rgrads) = kern, ref
    assert out.dtype == dtype and out.shape == rout.shape
    assert_close("out", out.cpu(), rout.to(dtype), dtype)
    if ret_final:
        assert fin.dtype == F32
        assert_close("final_states", fin.cpu(), rfin, dtype)
    floors = sum_floors(a, opts, rgrads, 1e-2 if dtype == F32 else 1.0)
    for name, g in grads.items():
        assert g.dtype == a[name].dtype, name
        assert_close(f"d{name}", g.cpu(), rgrads[name], dtype, **floors.get(name, {}))
    # the inference forward (no backward can follow: no checkpoints saved; the walk runs fwdo,
    # the chunk form cout)
    with torch.no_grad():
        res = ssmgen.mamba_chunk_scan_combined(
            chunk_size=64, **{k: v.detach().to(DEV) for k, v in a.items()}, **on_dev(opts),
            backend=backend, config=config, return_final_states=ret_final)
    out2, fin2 = res if ret_final else (res, None)
    assert_close("out (no grad)", out2.cpu(), rout.to(dtype), dtype)
    if ret_final:
        assert_close("final_states (no grad)", fin2.cpu(), rfin, dtype)


def sum_floors(a, opts, rgrads, frac=1.0):
    """dA and d dt_bias are sums over (batch, L) of per-step terms that can cancel in float64
    (seen: dA = -1.8e-4 from 33 terms of ~1e-2). The kernels, like mamba-ssm's, feed x dt decay
    and the state to the tensor cores in the input dtype, so each term carries that rounding:
    their error is judged against the terms' size (times frac), not the cancelled sum. In fp32
    too, at frac 1e-2 (its rounding is 2^-24, not 2^-8; seen, packed sequences: dA = -0.0731
    from terms of ~250 in size, off by 1.3e-5 = 5e-8 of them). Terms: d dt_bias =
    sum_t ddt_raw_t exactly; dA_h = sum_t dt'_t da_t with A_h da_t the decay part of ddt'_t,
    bounded here by |dt'_t ddt_raw_t| / |A_h| (softplus' <= 1)."""
    c = _normalize(**{k: v.detach() for k, v in a.items()}, chunk_size=None,
                   dt_softplus=opts["dt_softplus"], dt_limit=opts.get("dt_limit", (0.0, INF)),
                   check_values=False)
    dtp = _dt(c, torch.float64)
    ddt = rgrads["dt"].detach().double().abs()
    f = {"A": dict(floor=max(FLOOR, frac * ((dtp * ddt).sum((0, 1))
                                            / a["A"].detach().double().abs()).max().item()))}
    if "dt_bias" in a:
        f["dt_bias"] = dict(floor=max(FLOOR, frac * ddt.sum((0, 1)).max().item()))
    return f


CONFIGS = st.builds(dict, block_q=st.sampled_from([16, 32]), block_p=st.sampled_from([16, 32]),
                    bwd_block_p=st.sampled_from([16, 32]),
                    heads_per_program=st.sampled_from([1, 2, 4]),
                    splits=st.sampled_from([1, 2, 4]), bwd_kernels=st.sampled_from([1, 2, 3]),
                    dbc_block_p=st.sampled_from([16, 32]), walk_block_p=st.sampled_from([16, 32]))


def check_call(b, L, HG, P, N, D, z, dt_bias, softplus, dt_limit, h0, ret_final, dtype, dt_f32,
               config, seed):
    """One drawn call (interp_calls) against the reference."""
    H, G = HG
    a = make_inputs(seed, b, L, H, P, N, G, dtype, F32 if dt_f32 else dtype, D=D, z=z,
                    dt_bias=dt_bias, h0=h0, softplus=softplus)
    check(a, dict(dt_softplus=softplus, dt_limit=dt_limit), ret_final, config, dtype, seed)


# the interpreter tests' calls: sizes (L up to max_L) and every option
def interp_calls(max_L):
    return dict(b=st.integers(1, 2), L=st.integers(1, max_L), HG=st.sampled_from(HEADS_GROUPS),
                P=st.integers(1, 40), N=st.integers(1, 20), D=st.sampled_from([None, "h", "hp"]),
                z=st.booleans(), dt_bias=st.booleans(), softplus=st.booleans(),
                dt_limit=st.sampled_from([(0.0, INF), (0.1, 0.4)]), h0=st.booleans(),
                ret_final=st.booleans(), dtype=st.sampled_from([F32, F16]), dt_f32=st.booleans(),
                seed=st.integers(0, 2**31 - 1))


@pytest.mark.interp
@settings(max_examples=12, deadline=None)
@given(**interp_calls(50), config=CONFIGS)
def test_triton_ssd_matches_reference(**k):
    check_call(**k)


CHUNK_CONFIGS = st.builds(dict, form=st.just("chunk"), tile=st.just(16),
                          tiles=st.sampled_from([1, 2, 4]), walk_block_p=st.sampled_from([16, 32]),
                          splits=st.sampled_from([1, 2, 4]), heads_split=st.sampled_from([1, 2]),
                          dy_walk=st.sampled_from([0, 1]), cout_heads=st.sampled_from([1, 2]),
                          cdx_heads=st.sampled_from([1, 2]), heads_inner=st.sampled_from([0, 1]),
                          walk_block_n=st.sampled_from([0, 16]), dz_walk=st.sampled_from([0, 1]),
                          v_cdbc=st.sampled_from([0, 1]))


@pytest.mark.interp
@settings(max_examples=6, deadline=None)
@given(**interp_calls(70), config=CHUNK_CONFIGS)
def test_triton_ssd_chunk_form_matches_reference(**k):
    """The chunk form (backends/triton_ssd_chunk.py): states at chunk boundaries only."""
    check_call(**k)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", [(2, 300, 8, 64, 128, 1), (1, 129, 6, 48, 20, 3)])
@pytest.mark.parametrize("config", [None, dict(bwd_kernels=1), dict(bwd_kernels=2),
                                    dict(bwd_kernels=3, walk_block_p=32, walk_warps=8,
                                         walk_stages=2),
                                    dict(form="chunk"),
                                    dict(form="chunk", splits=4, walk_block_p=32, tiles=1),
                                    dict(form="chunk", dy_walk=1, tile=32, tiles=4,
                                         cout_heads=2, cdx_heads=2),
                                    dict(form="chunk", yp_recompute=1, heads_inner=1),
                                    dict(form="chunk", walk_block_n=32, splits=2, heads_inner=1),
                                    dict(form="chunk", dz_walk=1, v_cdbc=1, splits=2,
                                         heads_inner=1, cdx_regs=168)],
                         ids=["default", "pass2_one_kernel", "pass2_split", "walk_p32_w8_s2",
                              "chunk", "chunk_splits", "chunk_dyw", "chunk_yr", "chunk_bn",
                              "chunk_dzvc"])
def test_triton_ssd_matches_reference_gpu(shape, dtype, config, backend="triton"):
    b, L, H, P, N, G = shape
    a = make_inputs(7, b, L, H, P, N, G, dtype, dtype, D="h", z=True, dt_bias=True, h0=True,
                    softplus=True)
    check(a, dict(dt_softplus=True), True, config, dtype, 7, backend=backend)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F32])
@pytest.mark.parametrize("shape", [(1, 160, 4, 64, 256, 1), (1, 100, 2, 32, 512, 1)],
                         ids=["n256_walk", "n512_split"])
def test_triton_ssd_large_state_gpu(shape, dtype):
    """The default config above d_state 128: the walk at 8 warps up to 256, the split pass 2
    above (default_config)."""
    b, L, H, P, N, G = shape
    a = make_inputs(5, b, L, H, P, N, G, dtype, dtype, D="h", z=True, dt_bias=True, h0=True,
                    softplus=True)
    check(a, dict(dt_softplus=True), True, None, dtype, 5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", [(2, 300, 8, 64, 128, 1), (1, 257, 6, 48, 20, 3)])
@pytest.mark.parametrize("config", [None, dict(bwd_kernels=3, splits=4), dict(bwd_kernels=2)],
                         ids=["default", "walk_splits", "pass2_split"])
def test_triton_ssd_packed_gpu(shape, dtype, config, backend="triton"):
    """seq_idx on a realistic shape: 10 sequences per row at random places (row 1 not
    starting at seq_idx 0, so without the initial state), against the reference on the same
    packing; with batch 1 also the varlen states."""
    b, L, H, P, N, G = shape
    a = make_inputs(7, b, L, H, P, N, G, dtype, dtype, D="h", z=True, dt_bias=True, h0=True,
                    softplus=True)
    g = torch.Generator().manual_seed(L)
    starts = [sorted((torch.randperm(L - 2, generator=g)[:8] + 1).tolist()) + [L - 1]
              for _ in range(b)]  # the last sequence is one step long
    seq_idx = torch.zeros(b, L, dtype=torch.int32)
    for r in range(b):
        for s in starts[r]:
            seq_idx[r, s:] += 1
        seq_idx[r] += 3 * r
    opts = dict(dt_softplus=True, seq_idx=seq_idx)
    check(a, opts, True, config, dtype, 7, backend=backend)
    if b == 1:
        cu = torch.tensor([0] + starts[0] + [L], dtype=torch.int32)
        d = {k: v.detach() for k, v in a.items()}
        _, rvar = ssd_ref(**d, **opts, cu_seqlens=cu, return_varlen_states=True)
        _, var = ssmgen.mamba_chunk_scan_combined(
            **to_dev(d), chunk_size=64, **on_dev(opts), cu_seqlens=cu.to(DEV),
            return_varlen_states=True, backend=backend)
        assert_close("varlen_states", var.cpu(), rvar.to(dtype), dtype)


@pytest.mark.gpu
@settings(max_examples=int(os.environ.get("SSMGEN_SSD_EXAMPLES", "10")), deadline=None)  # compiles per example
@given(b=st.integers(1, 3), L=st.integers(1, 400), HG=st.sampled_from(HEADS_GROUPS),
       P=st.integers(1, 80), N=st.integers(1, 140), D=st.sampled_from([None, "h", "hp"]),
       z=st.booleans(), dt_bias=st.booleans(), h0=st.booleans(), ret_final=st.booleans(),
       dtype=st.sampled_from([BF16, F16, F32]),
       config=st.sampled_from([None, dict(block_q=32, block_p=16, heads_per_program=1),
                               dict(block_q=128, block_p=32, fwd_warps=8, bwd_block_p=32),
                               dict(block_q=16, block_p=32, splits=8),
                               dict(block_q=32, bwd_kernels=2, dbc_block_p=32, dbc_warps=8),
                               dict(block_q=16, bwd_kernels=2, heads_per_program=1,
                                    dbc_block_p=64),
                               dict(block_q=32, bwd_kernels=3, walk_block_p=32, splits=4),
                               dict(block_q=64, bwd_kernels=3, walk_warps=8),
                               dict(form="chunk"), dict(form="chunk", tiles=4, splits=2),
                               dict(form="chunk", tile=32, walk_block_p=32, heads_split=1),
                               dict(form="chunk", dy_walk=1, splits=2, tiles=2),
                               dict(form="chunk", tiles=1, cout_heads=2, cdx_heads=2)]),
       seed=st.integers(0, 2**31 - 1))
def test_triton_ssd_fuzz_gpu(b, L, HG, P, N, D, z, dt_bias, h0, ret_final, dtype, config, seed):
    H, G = HG
    # blocks of 128 steps need more than the H100's 227 KB of shared memory for fp32 above
    # d_state 64 and for bf16 / fp16 above 128 (aot compile reports); those raise a ValueError
    # naming the config (test_too_large_config_raises_before_launch)
    if config is not None and config.get("block_q") == 128:
        assume(N <= (64 if dtype == F32 else 128))
    # the chunk form's tiles of 64 steps: cdbc at its default 2 stages fits up to d_state 128
    # at headdim 128 (bf16 / fp16) or 64 (fp32) (triton_ssd_chunk._CDBC_STAGES)
    if config is not None and config.get("form") == "chunk":
        assume(N <= 128 and P <= (64 if dtype == F32 else 128))
    a = make_inputs(seed, b, L, H, P, N, G, dtype, dtype, D=D, z=z, dt_bias=dt_bias, h0=h0,
                    softplus=True)
    check(a, dict(dt_softplus=True), ret_final, config, dtype, seed)


@pytest.mark.interp
def test_segments_chain_like_one_call():
    """Training over a long sequence in two calls, the state carried, equals one call."""
    a = make_inputs(3, 1, 40, 2, 16, 16, 1, F32, D="h", z=True, h0=True, softplus=True)
    cfg = dict(block_q=16, block_p=16, bwd_block_p=16)
    f = lambda **k: ssmgen.mamba_chunk_scan_combined(  # noqa: E731
        chunk_size=64, dt_softplus=True, return_final_states=True, backend="triton", config=cfg,
        **k)
    out, fin = f(**a)
    cut = 23
    part = {k: v for k, v in a.items() if k not in ("x", "dt", "B", "C", "z", "initial_states")}
    o1, f1 = f(**{k: a[k][:, :cut] for k in ("x", "dt", "B", "C", "z")}, **part,
               initial_states=a["initial_states"])
    o2, f2 = f(**{k: a[k][:, cut:] for k in ("x", "dt", "B", "C", "z")}, **part,
               initial_states=f1)
    assert_close("out", torch.cat([o1, o2], 1), out, F32)
    assert_close("final", f2, fin, F32)
    g1 = torch.autograd.grad((out.sum() + fin.sum()), list(a.values()))
    g2 = torch.autograd.grad((torch.cat([o1, o2], 1).sum() + f2.sum()), list(a.values()))
    for name, x, y in zip(a, g2, g1):
        assert_close(f"d{name}", x, y, F32)


# Packed sequences: small enough for the interpreter, L <= 48 over blocks of 16 or 32 steps.
LENS = st.lists(st.integers(0, 20), min_size=1, max_size=4).filter(lambda v: 1 <= sum(v) <= 48)


def check_packed(a, seq_idx, cu, opts, config, dtype, seed):
    """The kernels on the packed call against the reference run on each sequence alone: out,
    final state, every gradient; and the varlen states against each sequence's final state."""
    rout, rfin, rstates, rgrads = each_alone(lambda **k: ssd_ref(**k, **opts), a, seq_idx, cu,
                                             seed)
    check(a, dict(opts, seq_idx=seq_idx), True, config, dtype, seed, ref=(rout, rfin, rgrads))
    d = {k: v.detach().to(DEV) for k, v in a.items()}
    out, fin, varlen = ssmgen.mamba_chunk_scan_combined(
        **d, chunk_size=64, **on_dev(opts), seq_idx=seq_idx.to(DEV), cu_seqlens=cu.to(DEV),
        return_final_states=True, return_varlen_states=True, backend="triton", config=config)
    assert varlen.dtype == dtype and varlen.shape == (len(cu) - 1,) + rfin.shape[1:]
    assert_close("varlen_states", varlen.cpu(), rstates.to(dtype), dtype)


@pytest.mark.interp
@settings(max_examples=8, deadline=None)
@given(lens=LENS, ids=IDS, HG=st.sampled_from(HEADS_GROUPS), P=st.integers(1, 16),
       N=st.integers(1, 16), D=st.sampled_from([None, "h", "hp"]), z=st.booleans(),
       dt_bias=st.booleans(), softplus=st.booleans(), h0=st.booleans(),
       dtype=st.sampled_from([F32, F16]), config=CONFIGS, seed=st.integers(0, 2**31 - 1))
def test_triton_packed_equals_each_sequence_alone(lens, ids, HG, P, N, D, z, dt_bias, softplus,
                                                  h0, dtype, config, seed):
    H, G = HG
    a, seq_idx, cu = packed_inputs(seed, lens, ids_of(lens, ids), H, P, N, G, dtype, D=D, z=z,
                                   dt_bias=dt_bias, h0=h0, softplus=softplus)
    check_packed(a, seq_idx, cu, dict(dt_softplus=softplus), config, dtype, seed)


@pytest.mark.interp
@pytest.mark.parametrize("first_id", [0, 2])
def test_triton_packed_at_block_edges(first_id):
    """Blocks of 16 steps: a sequence starting exactly at a block (16), one of one step, an
    empty one, one across a block edge, one ending with L; the initial state is the first
    sequence's only when its seq_idx is 0."""
    lens = [16, 1, 20, 0, 10]
    a, seq_idx, cu = packed_inputs(9, lens, [first_id + i for i in range(5)], 2, 16, 16, 1, F32,
                                   D="hp", z=True, dt_bias=True, h0=True, softplus=True)
    check_packed(a, seq_idx, cu, dict(dt_softplus=True),
                 dict(block_q=16, block_p=16, bwd_block_p=16, heads_per_program=2), F32, 9)


@pytest.mark.gpu
def test_too_large_config_raises_before_launch():
    """Blocks of 128 steps at d_state 140 in fp32 need ~370 KB of shared memory in fwd: a
    ValueError naming the config, from the compile, before any kernel runs."""
    a = make_inputs(0, 1, 256, 2, 64, 140, 1, F32, F32)
    with pytest.raises(ValueError, match=r"config q128_p32_w8_s2: the fwd kernel does not fit"):
        ssmgen.mamba_chunk_scan_combined(**to_dev(a), chunk_size=64, backend="triton",
                                         config=dict(block_q=128, block_p=32, fwd_warps=8))


@pytest.mark.interp
@pytest.mark.parametrize("splits, packed, bwd_kernels", [(2, True, 1), (8, False, 1),
                                                         (2, True, 3)])
def test_triton_splits_match_reference(splits, packed, bwd_kernels):
    """Sequence splits (5 blocks in 2 or 5 segments): the pre-passes' segment states and
    gradients, folded in by the main walks, against the reference; with packed sequences
    starting inside and at the edge of segments, the initial and final states."""
    a = make_inputs(3, 2, 70, 4, 8, 6, 2, F32, F32, D="h", z=True, dt_bias=True, h0=True,
                    softplus=True)
    opts = dict(dt_softplus=True)
    if packed:
        seq_idx = torch.zeros(2, 70, dtype=torch.int32)
        seq_idx[0, 20:] += 1
        seq_idx[0, 48:] += 1  # the first step of the second segment (3 blocks of 16 each)
        seq_idx[1, 33:] += 2
        opts["seq_idx"] = seq_idx
    check(a, opts, True, dict(block_q=16, block_p=16, bwd_block_p=16, heads_per_program=2,
                              splits=splits, bwd_kernels=bwd_kernels, walk_block_p=16), F32, 3)


@pytest.mark.interp
def test_interpreter_bf16_dot_is_broken():
    """Why the interpreter tests leave bf16 out: Triton 3.6's interpreter multiplies bfloat16
    tl.dot operands wrongly (values off by ~1e10). If this starts failing, the interpreter was
    fixed: add BF16 to test_triton_ssd_matches_reference."""
    import triton
    import triton.language as tl

    @triton.jit
    def k(a_ptr, b_ptr, o_ptr):
        r = tl.arange(0, 16)
        off = r[:, None] * 16 + r[None, :]
        tl.store(o_ptr + off, tl.dot(tl.load(a_ptr + off), tl.load(b_ptr + off)))

    a, b = torch.randn(16, 16).to(BF16), torch.randn(16, 16).to(BF16)
    o = torch.empty(16, 16)
    k[(1,)](a, b, o)
    assert not torch.allclose(o, a.float() @ b.float(), rtol=1e-2, atol=1e-2)


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    a = make_inputs(0, 1, 8, 2, 4, 4, 1)  # CPU tensors, on any machine
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="triton")


@pytest.mark.parametrize("change, pattern", [
    (dict(block_q=8), r"config\.block_q must be >= 16"),
    (dict(block_q=256), r"config\.block_q must be <= 128"),
    (dict(block_p=24), r"config\.block_p must be a positive power of two"),
    (dict(heads_per_program=0), r"config\.heads_per_program"),
])
def test_bad_config_raises_naming_the_field(change, pattern):
    a = make_inputs(0, 1, 8, 2, 4, 4, 1)
    with pytest.raises(ValueError, match=pattern):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="triton", config=change)
    with pytest.raises(TypeError, match="fields are"):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="triton",
                                         config=dict(block_x=16))
    with pytest.raises(ValueError, match="config applies to backend='triton' or 'cuda' only"):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="torch", config={})


def test_spec_names_every_field():
    s = SSDSpec(d_state=128, headdim=64, dtype="bfloat16", dt_dtype="bfloat16", has_D=True,
                has_z=True, has_dt_bias=True, dt_softplus=True, return_final_states=True)
    assert s.short_name() == "n128_p64_bf16_dtbf16_D_z_db_sp_last"
    assert SSDSpec.from_json(s.to_json()) == s
    assert SSDSpec(16, 8).key() == "ssd1-n16-p8-bf16"
    packed = SSDSpec(d_state=16, headdim=8, has_seq_idx=True)
    assert packed.short_name() == "n16_p8_bf16_dtf32_seq"
    assert packed.key() == "ssd1-n16-p8-bf16-has_seq_idx=1"
    assert "seq_ptr" in dict(triton_ssd.kernel_params(packed, "bwd"))
    assert "seq_ptr" not in dict(triton_ssd.kernel_params(s, "bwd"))
    with pytest.raises(ValueError, match="d_state"):
        SSDSpec(d_state=513, headdim=8)
    with pytest.raises(ValueError, match="D_per_channel needs has_D"):
        SSDSpec(d_state=8, headdim=8, D_per_channel=True)
    cfg = triton_ssd.walk_config(s)
    assert triton_ssd.SSDConfig.decode(cfg.encode()) == cfg
    assert "ssd_bwd_n128_p64" in triton_ssd.kernel_name(s, cfg, "bwd")


def test_pass2_split_kernels_and_config():
    """Pass 2 in two kernels: bwdx takes no dB/dC and no checkpoint but the forward's Yi (fwdy
    saves it; fwd does not) and pass 1's sigma (dstatey makes it from the checkpoints); dbc takes
    dB/dC in B's dtype (summed over a group's heads in the kernel) and the group count; names
    carry each kernel's own config; an encoding from before the split's fields decodes to one
    kernel; a bad count is named; the split backward without Yi is refused."""
    s = SSDSpec(d_state=128, headdim=64, dtype="bfloat16", has_z=True, has_dt_bias=True)
    x, d = dict(triton_ssd.kernel_params(s, "bwdx")), dict(triton_ssd.kernel_params(s, "dbc"))
    assert "dB_ptr" not in x and "dx_ptr" in x and "NHB" not in x
    assert "ckpt_ptr" not in x and x["yi_ptr"] == "*bf16" and x["sig_ptr"] == "*fp32"
    assert dict(triton_ssd.kernel_params(s, "fwdy"))["yi_ptr"] == x["yp_ptr"] == "*bf16"
    assert "yi_ptr" not in dict(triton_ssd.kernel_params(s, "fwd"))
    y = dict(triton_ssd.kernel_params(s, "dstatey"))
    assert y["ckpt_ptr"] == "*bf16" and y["sig_ptr"] == "*fp32"
    assert "sig_ptr" not in dict(triton_ssd.kernel_params(s, "dstate"))
    assert d["dB_ptr"] == d["dC_ptr"] == "*bf16" and "G" in d and "dx_ptr" not in d
    assert dict(triton_ssd.kernel_params(s, "bwd"))["dB_ptr"] == "*fp32"
    cfg = triton_ssd.SSDConfig(bwd_kernels=2, bwd_block_p=32, dbc_block_p=16, dbc_stages=2)
    assert triton_ssd.kernel_name(s, cfg, "bwdx").endswith("__q64_p32_h4_w8_s1")
    assert triton_ssd.kernel_name(s, cfg, "dbc").endswith("__q64_p16_w4_s2")
    old = "32,64,4,2,32,4,4,1,1"  # the nine fields of the one-kernel config
    assert triton_ssd.SSDConfig.decode(old).bwd_kernels == 1
    with pytest.raises(ValueError, match="config.bwd_kernels must be one of"):
        triton_ssd.SSDConfig(bwd_kernels=4).check()
    with pytest.raises(ValueError, match="config.bwd_kernels must be one of"):
        triton_ssd.SSDConfig(bwd_kernels=0).check()
    assert triton_ssd.kernel_name(s, cfg, "dwalk").endswith("__q64_p64_w4_s1")
    assert triton_ssd.kernel_name(s, cfg, "dfin").endswith("__q64_p64_w1")
    a = make_inputs(1, 1, 8, 2, 4, 4, 1, F32)
    c = _normalize(**{k: v.detach() for k, v in a.items()}, chunk_size=None, check_values=False)
    with pytest.raises(ValueError, match="reads the forward's Yi and pass 1's sigma"):
        triton_ssd.backward_grads(c, spec_of(c), cfg, None, None, None)


@pytest.mark.interp
@pytest.mark.parametrize("packed,bwd_kernels", [(False, 1), (True, 2), (True, 3)])
def test_custom_ops_pass_opcheck(packed, bwd_kernels):
    a = make_inputs(5, 1, 20, 2, 16, 16, 1, F32, D="h", z=True, dt_bias=True, h0=True,
                    softplus=True)
    a = {k: v.detach() for k, v in a.items()}
    cfg = triton_ssd.SSDConfig(block_q=16, block_p=16, bwd_block_p=16, dbc_block_p=16,
                               walk_block_p=16, bwd_kernels=bwd_kernels).encode()
    seq_idx = (torch.arange(20, dtype=torch.int32) // 7)[None] if packed else None
    ins = tuple(a[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states"))
    ins += (seq_idx,)
    flags = (True, 0.0, INF, True, cfg)
    for saves in ((True, False), (False, False), (False, True)):  # for_backward, keep_ckpt
        torch.library.opcheck(torch.ops.ssmgen.ssd_fwd, ins + flags + saves,
                              test_utils=("test_schema", "test_faketensor"))
    assert torch.ops.ssmgen.ssd_fwd(*ins, *flags, False, False)[2].numel() == 0  # fwdo
    out, fin, ckpt, saved = torch.ops.ssmgen.ssd_fwd(*ins, *flags, True, False)
    assert saved.shape == ((2, *out.shape) if bwd_kernels > 1 else (0,))  # Yi, y before gate
    torch.library.opcheck(torch.ops.ssmgen.ssd_bwd,
                          ins + flags + (ckpt, saved, torch.randn_like(out),
                                         torch.randn_like(fin)),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.interp
@pytest.mark.parametrize("packed, config", [
    (False, dict(block_q=16, block_p=16, bwd_block_p=16)),
    (True, dict(block_q=16, block_p=16, bwd_block_p=16)),
    (False, dict(form="chunk", tile=16, tiles=2, walk_block_p=16))], ids=["walk", "packed", "chunk"])
def test_torch_compile_fullgraph_forward_and_backward(packed, config):
    a = make_inputs(6, 1, 20, 2, 16, 16, 1, F32, D="h", z=True, softplus=True)
    seq_idx = (torch.arange(20, dtype=torch.int32) // 7)[None] if packed else None

    def f(**kw):
        return ssmgen.mamba_chunk_scan_combined(**kw, chunk_size=16, dt_softplus=True,
                                                seq_idx=seq_idx, backend="triton",
                                                config=config)

    eager = f(**a)
    geager = torch.autograd.grad(eager.sum(), list(a.values()))
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(**a)
    gcomp = torch.autograd.grad(out.sum(), list(a.values()))
    assert torch.equal(out, eager)
    for x, y in zip(gcomp, geager):
        assert torch.equal(x, y)


@pytest.mark.parametrize("which", ["final", "out"])
def test_gradient_of_one_output_only(which):
    """Only the final states (or only out) reach the loss: the backward gets no gradient for the
    other output (no zero buffer is made for it) and still gives every input's gradient."""
    a = make_inputs(5, b=1, L=20, H=2, P=4, N=8, G=1, D="h", z=True, dt_bias=True, h0=True,
                    softplus=True)
    opts = dict(dt_softplus=True)

    def grads(fn, inputs):
        out, fin = fn(**inputs, **opts, return_final_states=True)
        g = torch.Generator().manual_seed(1)
        t = fin if which == "final" else out
        loss = (t.double() * torch.randn(t.shape, generator=g, dtype=torch.float64)
                .to(t.device)).sum()
        g = torch.autograd.grad(loss, list(inputs.values()), allow_unused=True)
        return [torch.zeros_like(v) if d is None else d for d, v in zip(g, inputs.values())]

    got = grads(lambda **k: ssmgen.mamba_chunk_scan_combined(
        chunk_size=64, **k, backend="triton", config=dict(block_q=16, block_p=16,
                                                           bwd_block_p=16)), to_dev(a))
    want = grads(ssd_ref, {k: v.detach().requires_grad_(True) for k, v in a.items()})
    for name, g, r in zip(a, got, want):
        assert_close(f"d{name}", g.cpu(), r, F32)


@pytest.mark.interp
@pytest.mark.parametrize("bwd_kernels, backward", [(2, ["dstatey", "bwdx", "dbc"]),
                                                   (3, ["dwalk", "dfin", "dbc"])])
def test_split_backward_saves_only_when_a_backward_can_follow(monkeypatch, bwd_kernels, backward):
    """The split pass 2's and the walk's inputs from the forward (Yi, y before the gate) are
    x-sized: saved (kind fwdy) only with grad enabled and an input requiring grad; the backward
    then runs dstatey, bwdx and dbc (bwd_kernels=2) or dwalk, dfin and dbc (3). Without a
    backward the checkpoints are not written either (kind fwdo) unless the varlen states read
    them (kind fwd)."""
    kinds, real = [], triton_ssd._launch
    monkeypatch.setattr(triton_ssd, "_launch", lambda s, c, k, a, g: kinds.append(k) or
                        real(s, c, k, a, g))
    a = make_inputs(3, 1, 20, 2, 8, 8, 1, F32, D="h", z=True)
    cfg = dict(block_q=16, block_p=16, bwd_block_p=16, dbc_block_p=16, walk_block_p=16,
               bwd_kernels=bwd_kernels)

    def run(**k):
        return ssmgen.mamba_chunk_scan_combined(chunk_size=16, **k, backend="triton", config=cfg)

    with torch.no_grad():
        out = run(**a)
    assert kinds == ["fwdo"]  # no checkpoint written: nothing reads them
    # its output is the reference's (SSMGEN_POISON: an unwritten element is NaN)
    assert_close("out", out, ssd_ref(**{k: v.detach() for k, v in a.items()}), F32)
    kinds.clear()
    run(**{k: v.detach() for k, v in a.items()})  # grad enabled, nothing requires grad
    assert kinds == ["fwdo"]
    kinds.clear()
    with torch.no_grad():  # the varlen states read the checkpoints
        ssmgen.mamba_chunk_scan_combined(
            chunk_size=16, **a, backend="triton", config=cfg, seq_idx=torch.zeros(1, 20,
                                                                                  dtype=torch.int32),
            cu_seqlens=torch.tensor([0, 20]), return_varlen_states=True)
    assert kinds == ["fwd"]
    kinds.clear()
    leaves = {k: v.detach().requires_grad_(True) for k, v in a.items()}
    run(**leaves).sum().backward()
    assert kinds == ["fwdy"] + backward
    assert all(v.grad is not None and v.grad.isfinite().all() for v in leaves.values())
