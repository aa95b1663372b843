"""The SSD chunk form (backends/triton_ssd_chunk.py): its config, when the default takes it,
the kernels each call launches, and the custom ops and torch.compile over it. Its numerics
against the float64 reference are in test_ssd_kernels.py (hypothesis in the interpreter,
realistic shapes and fuzz on the GPU), and so is torch.compile over it."""
from dataclasses import replace

import pytest
import torch

import ssmgen
from ssmgen.backends import triton_ssd, triton_ssd_chunk as tc
from ssmgen.numerics import assert_close
from ssmgen.spec import SSDSpec
from ssmgen.ssd import ssd_ref
from ssmgen.ssd_kernels import decode_config
from test_ssd import F32, INF, make_inputs
from test_ssd_kernels import poison  # noqa: F401  (autouse: unwritten elements are NaN)

SMALL = dict(form="chunk", tile=16, tiles=2, walk_block_p=16)


@pytest.mark.parametrize("change, pattern", [
    (dict(tile=8), r"config\.tile must be >= 16"),
    (dict(tile=256), r"config\.tile must be <= 128"),
    (dict(tiles=3), r"config\.tiles must be a positive power of two"),
    (dict(cout_stages=5), r"config\.cout_stages must be in 1\.\.4"),
    (dict(splits=128), r"config\.splits must be <= 64"),
    (dict(dy_walk=2), r"config\.dy_walk must be 0 or 1"),
    (dict(heads_inner=2), r"config\.heads_inner must be 0 or 1"),
    (dict(cdx_regs=100), r"config\.cdx_regs must be 0 \(no cap\) or a multiple of 8"),
    (dict(cout_regs=256), r"config\.cout_regs must be 0 \(no cap\) or a multiple of 8"),
    (dict(yp_recompute=2), r"config\.yp_recompute must be 0 or 1"),
    (dict(walk_block_n=8), r"config\.walk_block_n must be 0 \(all of d_state\) or a power"),
    (dict(walk_block_n=48), r"config\.walk_block_n must be 0 \(all of d_state\) or a power"),
    (dict(yp_recompute=1), r"config\.yp_recompute needs config\.tiles == 1"),
    (dict(dz_walk=2), r"config\.dz_walk must be 0 or 1"),
    (dict(v_cdbc=2), r"config\.v_cdbc must be 0 or 1"),
    (dict(tiles=1, yp_recompute=1, dz_walk=1), r"config\.dz_walk needs config\.yp_recompute == 0"),
    (dict(tiles=1, yp_recompute=1, v_cdbc=1), r"config\.v_cdbc needs config\.yp_recompute == 0"),
    (dict(form="blocks"), r"config\.form must be one of \('walk', 'chunk'\)"),
])
def test_bad_chunk_config_raises_naming_the_field(change, pattern):
    a = make_inputs(0, 1, 8, 2, 4, 4, 1)
    with pytest.raises(ValueError, match=pattern):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="triton",
                                         config=dict(SMALL, **change))
    with pytest.raises(TypeError, match="fields are"):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="triton",
                                         config=dict(form="chunk", block_q=16))


def test_chunk_form_refuses_packed_sequences_before_launch():
    a = make_inputs(0, 1, 8, 2, 4, 4, 1)
    with pytest.raises(ValueError, match="does not take packed sequences"):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="triton", config=SMALL,
                                         seq_idx=torch.zeros(1, 8, dtype=torch.int32))


def test_chunk_config_text_and_interval():
    cfg = tc.SSDChunkConfig(tile=32, tiles=4, splits=2)
    assert decode_config(cfg.encode()) == cfg and cfg.encode().startswith("chunk,")
    assert cfg.block_q == 128  # the states' interval, read like the walk's checkpoints'
    assert decode_config(triton_ssd.SSDConfig().encode()) == triton_ssd.SSDConfig()


def test_default_takes_the_chunk_form_where_measured_faster():
    """Training: the chunk form, with sequence splits where batch x heads gives its walks under
    2 programs per SM (batch 1 as in ssd_long), cdbc forming v and sigma for 2-byte x at
    headdim <= 64; the inference forward too (cdx_relief). The walk for packed sequences,
    d_state above 128 and where the chunk form's defaults would not fit (fp32, headdim 256)."""
    s = SSDSpec(128, 64, "bfloat16", "bfloat16", has_D=True, has_z=True, has_dt_bias=True,
                dt_softplus=True)
    big = triton_ssd.default_config(s, 8, 64)
    assert isinstance(big, tc.SSDChunkConfig) and big.splits == 1
    assert triton_ssd.default_config(s, 1, 64).splits == 4  # 64 programs: 256 with 4 splits
    assert triton_ssd.default_config(s, 2, 64).splits == 2
    # heads first in cout's and cdx's grids only where the sequence is split (sweep2)
    assert big.heads_inner == 0 and triton_ssd.default_config(s, 1, 64).heads_inner == 1
    # cout's register cap only for 2-byte x at padded headdim <= 64
    assert big.cout_regs == 128 and big.launch("couty")["maxnreg"] == 128
    for dtype, P in (("bfloat16", 128), ("float32", 64)):
        other = triton_ssd.default_config(replace(s, dtype=dtype, dt_dtype=dtype, headdim=P), 8, 64)
        assert other.cout_regs == 0 and "maxnreg" not in other.launch("couty")
        assert other.v_cdbc == 0  # cdbc forms v only where measured (cdx_relief)
    assert big.v_cdbc == 1 and triton_ssd.default_config(s, 1, 64).v_cdbc == 1
    assert big.dz_walk == 0  # measured slower (cdst 0.45 -> 0.97 ms on ssd_long)
    for other in (replace(s, has_seq_idx=True), replace(s, d_state=256),
                  replace(s, dtype="float32", dt_dtype="float32", headdim=256)):
        assert isinstance(triton_ssd.default_config(other, 8, 64), triton_ssd.SSDConfig)
    # cdbc's stages: as many as fit its shared memory (triton_ssd_chunk._CDBC_STAGES)
    assert big.cdbc_stages == 3
    for dtype, P, stages in (("bfloat16", 128, 2), ("float32", 64, 2), ("float32", 128, 1)):
        other = replace(s, dtype=dtype, dt_dtype=dtype, headdim=P)
        assert triton_ssd.default_config(other, 8, 64).cdbc_stages == stages


@pytest.mark.interp
@pytest.mark.parametrize("splits", [1, 2])
def test_chunk_form_launches(monkeypatch, splits):
    """The kernels each call runs: the inference forward saves no y before the gate (cout),
    a forward with a backward to follow does (couty); sequence splits add each walk's
    pre-pass. The results are the reference's (SSMGEN_POISON: unwritten elements are NaN)."""
    kinds, real = [], tc._launch
    monkeypatch.setattr(tc, "_launch", lambda s, c, k, a, g: kinds.append(k) or real(s, c, k, a, g))
    a = make_inputs(3, 1, 70, 2, 8, 8, 1, F32, D="h", z=True, softplus=True)
    cfg = dict(SMALL, splits=splits)

    def run(**k):
        return ssmgen.mamba_chunk_scan_combined(chunk_size=16, **k, dt_softplus=True,
                                                backend="triton", config=cfg)

    pre = ["cstp"] if splits > 1 else []
    with torch.no_grad():
        out = run(**a)
    assert kinds == ["ccum"] + pre + ["cst", "cout"]
    assert_close("out", out, ssd_ref(**{k: v.detach() for k, v in a.items()},
                                     dt_softplus=True), F32)
    kinds.clear()
    leaves = {k: v.detach().requires_grad_(True) for k, v in a.items()}
    run(**leaves).sum().backward()
    assert kinds == (["ccum"] + pre + ["cst", "couty", "ccum"] + (["cdstp"] if splits > 1 else [])
                     + ["cdst", "cdx", "cdbc", "cdfin"])
    assert all(v.grad is not None and v.grad.isfinite().all() for v in leaves.values())


@pytest.mark.interp
@pytest.mark.parametrize("z", [True, False])
def test_chunk_custom_ops_pass_opcheck(z):
    """The ops' fake implementations give the chunk form's shapes: states per chunk, and y
    before the gate saved only with z."""
    a = make_inputs(5, 1, 40, 2, 16, 16, 1, F32, D="h", z=z, dt_bias=True, h0=True,
                    softplus=True)
    a = {k: v.detach() for k, v in a.items()}
    cfg = tc.SSDChunkConfig(tile=16, tiles=1, walk_block_p=16).encode()
    ins = tuple(a.get(k) for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias",
                                   "initial_states")) + (None,)
    flags = (True, 0.0, INF, True, cfg)
    for saves in ((True, False), (False, False), (False, True)):  # for_backward, keep_ckpt
        torch.library.opcheck(torch.ops.ssmgen.ssd_fwd, ins + flags + saves,
                              test_utils=("test_schema", "test_faketensor"))
    out, fin, ckpt, saved = torch.ops.ssmgen.ssd_fwd(*ins, *flags, True, False)
    assert ckpt.shape == (1, 2, 3, 16, 16)  # (batch, heads, chunks of 16 steps, P, N)
    assert saved.shape == ((1, *out.shape) if z else (0,))
    torch.library.opcheck(torch.ops.ssmgen.ssd_bwd,
                          ins + flags + (ckpt, saved, torch.randn_like(out),
                                         torch.randn_like(fin)),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.interp
@pytest.mark.parametrize("HG, tiles, heads", [((4, 1), 1, 4), ((4, 2), 2, 2), ((3, 1), 1, 2)],
                         ids=["one_group_4", "two_groups_2_tiles2", "not_dividing"])
def test_heads_per_program_match_reference(HG, tiles, heads):
    """cout and cdx over several heads of one group per program (cout_heads, cdx_heads), in
    either grid order (heads_inner), against the float64 reference, every gradient; where
    they do not divide the group's heads (3 heads, 2 per program) the launch takes one head
    per program."""
    from test_ssd_kernels import check_call

    for inner in (0, 1):
        check_call(2, 37, HG, 8, 6, "hp", True, True, True, (0.0, INF), True, True, F32, False,
                   dict(SMALL, tiles=tiles, cout_heads=heads, cdx_heads=heads, dy_walk=1,
                        heads_inner=inner), 11)


@pytest.mark.interp
@pytest.mark.parametrize("D, z, heads", [("h", True, 1), ("hp", True, 2), (None, True, 1),
                                         ("h", False, 1)])
def test_yp_recompute_matches_reference(monkeypatch, D, z, heads):
    """config yp_recompute: cdx forms y before the gate again for dz, so the forward saves
    nothing x-sized and launches cout, not couty. Every gradient against the float64
    reference; with D per head and per channel, one and two heads per program; without z
    the field changes nothing."""
    from test_ssd_kernels import check_call

    kinds, real = [], tc._launch
    monkeypatch.setattr(tc, "_launch", lambda s, c, k, a, g: kinds.append(k) or real(s, c, k, a, g))
    saved, real_fwd = [], tc.forward

    def forward(*a, **k):
        r = real_fwd(*a, **k)
        saved.append(r[3])  # what the forward keeps for the backward besides the states
        return r

    monkeypatch.setattr(tc, "forward", forward)
    check_call(2, 45, (4, 2), 8, 6, D, z, True, True, (0.0, INF), True, True, F32, False,
               dict(SMALL, tiles=1, yp_recompute=1, cdx_heads=heads, heads_inner=1), 5)
    assert "couty" not in kinds and "cout" in kinds and "cdx" in kinds
    assert saved and all(s is None for s in saved)


@pytest.mark.interp
@pytest.mark.parametrize("splits, N", [(1, 40), (2, 20)])
def test_walks_over_state_blocks_match_reference(monkeypatch, splits, N):
    """config walk_block_n: the walks cst and cdst over blocks of d_state columns (the last
    one partly masked at N 40 or 20 in blocks of 16), with and without sequence splits, an
    initial state and the final state's gradient: every gradient against the float64
    reference, and the walks launched with the state blocks in their grids."""
    from test_ssd_kernels import check_call

    grids, real = {}, tc._launch

    def launch(spec, cfg, kind, a, grid):
        grids[kind] = grid
        real(spec, cfg, kind, a, grid)

    monkeypatch.setattr(tc, "_launch", launch)
    check_call(1, 53, (2, 1), 8, N, "h", True, True, True, (0.0, INF), True, True, F32, False,
               dict(SMALL, walk_block_n=16, splits=splits), 13)
    blocks = (64 if N > 32 else 32) // 16  # padded d_state in blocks of 16; one channel block
    assert grids["cst"][0] == grids["cdst"][0] == blocks * splits


@pytest.mark.interp
@pytest.mark.parametrize("dz_walk, v_cdbc, D, z", [(1, 0, "hp", True), (0, 1, "h", True),
                                                   (1, 1, "h", True), (1, 1, None, False)])
def test_work_moved_out_of_cdx_matches_reference(monkeypatch, dz_walk, v_cdbc, D, z):
    """config dz_walk (the walk cdst forms dz) and v_cdbc (cdbc forms the entering state's part
    of d cum and sigma): every gradient against the float64 reference, with sequence splits (dz
    from the main walk only, not the pre-pass), two tiles a chunk, cdbc's heads split, and a
    kernel name that says where the work went; without z dz_walk changes nothing."""
    from test_ssd_kernels import check_call

    names, real = [], tc._launch
    monkeypatch.setattr(tc, "_launch", lambda s, c, k, a, g: names.append(tc.kernel_name(s, c, k))
                        or real(s, c, k, a, g))
    check_call(2, 45, (4, 2), 8, 6, D, z, True, True, (0.0, INF), True, True, F32, False,
               dict(SMALL, splits=2, heads_split=2, dz_walk=dz_walk, v_cdbc=v_cdbc), 17)
    cdx = next(n for n in names if "_cdx_" in n)
    assert ("_dzw" in cdx) == bool(dz_walk) and ("_vc" in cdx) == bool(v_cdbc)
