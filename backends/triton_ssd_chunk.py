"""Triton backend of the SSD scan in chunk form: states only at chunk boundaries, every
within-chunk product a [tile, tile] or [tile, d_state] tensor-core tile (design and
measurements: benchmarks/NOTES.md, "SSD in chunk form" and "SSD chunk form, round 2"; the
experiment it came from: benchmarks/exp/ssd_chunk.py). A chunk is `tiles` tiles of `tile`
steps.

Kernels (templates/triton/ssd_chunk_*.py.jinja), in launch order:
  ccum   (chunk, head, row)          dt' and cum (the log decay summed within the chunk)
  cst    (state block x channel block x segment, head, row)  walks the chunks: the state
         entering each (the checkpoints); cstp: its pre-pass where the sequence is split
  cout   (tile x head block, 1, row)  y from the entering state and the chunk's tiles up to
         its own; couty also saves y before the gate for dz
  cdst   (state block x channel block x segment, head, row)  walks back: dS leaving each chunk;
         cdstp: its pre-pass
  cdx    (tile x head block, 1, row)  dx, dz, dD, x . G, the parts of d cum, sigma (the
         leaving state's part of the gradient of a chunk's total decay), and dy (with z,
         config dy_walk=0; with dy_walk=1 cdst stores it)
  cdbc   (tile, group x heads_split, row)  dB and dC
  cdfin  (chunk, head, row)          d a, ddt, and the chunk's parts of dA and d dt_bias
Packed sequences (seq_idx) are not taken: the walk (triton_ssd) serves them.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton

from ssmgen import render
from ssmgen.spec import SSDSpec

from .buffers import new
from .config import IntConfig
from .triton_ssd import (_args, _grad_buffers, _grads, _state_grad_buffers, check_launch,
                         ckpt_dtype, launch_kernel, padded_headdim, padded_state, param_types,
                         segments)

KINDS = ("ccum", "cst", "cstp", "cout", "couty", "cdst", "cdstp", "cdx", "cdbc", "cdfin")
TEMPLATE_OF = {"cstp": "cst", "couty": "cout", "cdstp": "cdst"}
TEMPLATES = tuple(f"triton/ssd_chunk_{k}.py.jinja" for k in KINDS if k not in TEMPLATE_OF) + (
    "triton/ssd_chunk_common.py.jinja", "triton/ssd_chunk_macros.jinja")
MAX_SPLITS = 64
_WALKS = ("cst", "cstp", "cdst", "cdstp")


@dataclass(frozen=True)
class SSDChunkConfig(IntConfig):
    """tile: steps per tile (the products' edge); tiles: tiles per chunk (states are saved
    every tile * tiles steps); walk_block_p: channels per program of the two walks (cst,
    cdst); splits: segments of whole chunks the walks cut the sequence into (a pre-pass
    each); heads_split: programs sharing one group's heads in cdbc (fp32 partials above 1);
    <kernel>_warps / _stages: each kernel's launch options; dy_walk (with z): 1 has the walk
    cdst store dy = dout silu(z) once and cdx read it, 0 has cdx form it from dout and z
    (stored from each source tile for cdbc): a store in the sequential walk against loads
    in the parallel kernel; cout_heads / cdx_heads: heads per program of cout / cdx (one
    group's: the tile's B / C and the diagonal pair's C B^T are shared; 1 where they do not
    divide the group's heads); heads_inner: 1 orders cout's and cdx's programs heads first
    (those running together share a tile's B and C in L2), 0 tiles first (sweep2: 1 faster
    on ssd_long, batch 1; 0 on ssd_1.3b, batch 8); cout_regs / cdx_regs: a cap on cout's /
    cdx's registers per thread (ptxas' maxnreg; 0: the compiler's choice, up to 255), for
    more programs per SM at the price of spills; yp_recompute (with z, one tile a chunk): 1
    has cdx form y before the gate again (one more [tile, tile] x [tile, headdim] product)
    for dz, 0 has couty store it in the forward and cdx read it (an x-sized tensor saved
    between the passes: written once, read once; sweep3: 0 faster); walk_block_n: d_state
    columns per program of the two walks (0: all of the padded d_state): a split of the state
    needs no pre-pass, as sequence splits do, for more walk programs where batch x heads x
    channel blocks leave SMs idle (sweep4: slower than splits on ssd_long); dz_walk (with z): 1
    has the walk cdst form dz from dout, z and y before the gate (it reads dout and z anyway)
    instead of cdx, whose registers the dz tiles add to (cdx_relief: cdst twice as slow, more
    than cdx gains); v_cdbc: 1 has cdbc, which loads each head's S and dS anyway, form the
    entering state's part of d cum (dy . C S^T e^cum: one more product a head) and sigma_c
    instead of cdx, which then does not read the forward's states S at all (cdx_relief:
    faster, default_config takes it)."""

    tile: int = 64
    tiles: int = 1
    walk_block_p: int = 64
    splits: int = 1
    heads_split: int = 1
    cst_warps: int = 8
    cst_stages: int = 3
    cout_warps: int = 4
    cout_stages: int = 1  # one tile a chunk: no loop to pipeline (sweep2)
    cdst_warps: int = 4
    cdst_stages: int = 2
    cdx_warps: int = 4
    cdx_stages: int = 1
    cdbc_warps: int = 8
    cdbc_stages: int = 2
    dy_walk: int = 0
    cout_heads: int = 1
    cdx_heads: int = 1
    heads_inner: int = 0
    cout_regs: int = 0
    cdx_regs: int = 0
    yp_recompute: int = 0
    walk_block_n: int = 0
    dz_walk: int = 0
    v_cdbc: int = 0

    backend = "triton"
    PREFIX = "chunk"  # encode(): what tells this config's text from the walk's (SSDConfig)

    @property
    def block_q(self) -> int:
        """Steps between saved states (the chunk): the checkpoints' interval, as for SSDConfig."""
        return self.tile * self.tiles

    def launch(self, kind: str) -> dict:
        if kind in ("ccum", "cdfin"):
            return dict(num_warps=4, num_stages=1)
        k = TEMPLATE_OF.get(kind, kind)
        lc = dict(num_warps=getattr(self, f"{k}_warps"), num_stages=getattr(self, f"{k}_stages"))
        if getattr(self, f"{k}_regs", 0):
            lc["maxnreg"] = getattr(self, f"{k}_regs")
        return lc

    def tag(self, kind: str) -> str:
        k = TEMPLATE_OF.get(kind, kind)
        t = f"t{self.tile}x{self.tiles}"
        if kind in ("ccum", "cdfin"):
            return t
        lc = self.launch(kind)
        t += f"_w{lc['num_warps']}_s{lc['num_stages']}"
        if k in ("cst", "cdst"):
            t += f"_p{self.walk_block_p}" + (f"n{self.walk_block_n}" if self.walk_block_n else "")
        if k in ("cdst", "cdx") and self.dy_walk:
            t += "_dyw"
        if k in ("cdst", "cdx") and self.dz_walk:
            t += "_dzw"  # dz formed in the walk
        if k in ("cdx", "cdbc") and self.v_cdbc:
            t += "_vc"  # the states' part of d cum and sigma in cdbc
        if k == "cdx" and self.yp_recompute:
            t += "_yr"  # y before the gate formed again
        if k in ("cout", "cdx") and getattr(self, f"{k}_heads") > 1:
            t += f"_hp{getattr(self, f'{k}_heads')}"
        if k in ("cout", "cdx") and self.heads_inner:
            t += "_hf"  # heads first in the grid
        if "maxnreg" in lc:
            t += f"_r{lc['maxnreg']}"
        return t + (f"_h{self.heads_split}" if k == "cdbc" else "")

    def check(self, spec: SSDSpec | None = None) -> None:
        stages = tuple(f"{k}_stages" for k in ("cst", "cout", "cdst", "cdx", "cdbc"))
        regs = ("cout_regs", "cdx_regs")
        flags = ("dy_walk", "heads_inner", "yp_recompute", "dz_walk", "v_cdbc")
        self.check_powers(choices=stages + regs + flags + ("walk_block_n",))
        for name in regs:  # ptxas takes 24..255; a multiple of 8 as registers are allocated
            v = getattr(self, name)
            if v and not (24 <= v <= 248 and v % 8 == 0):
                raise ValueError(f"config.{name} must be 0 (no cap) or a multiple of 8 in "
                                 f"24..248, got {v}")
        for name in flags:
            if getattr(self, name) not in (0, 1):
                raise ValueError(f"config.{name} must be 0 or 1, got {getattr(self, name)}")
        for name in ("dz_walk", "v_cdbc"):  # cdx forms y before the gate from S itself
            if self.yp_recompute and getattr(self, name):
                raise ValueError(f"config.{name} needs config.yp_recompute == 0 (cdx forms y "
                                 f"before the gate again from the states), got both 1")
        for name in stages:
            if not 1 <= getattr(self, name) <= 4:
                raise ValueError(f"config.{name} must be in 1..4, got {getattr(self, name)}")
        for name in ("tile", "walk_block_p"):
            if getattr(self, name) < 16:  # tl.dot's smallest tile edge
                raise ValueError(f"config.{name} must be >= 16, got {getattr(self, name)}")
        n = self.walk_block_n
        if n and (n < 16 or n & (n - 1)):  # tl.dot's smallest edge; a power of two divides NP
            raise ValueError(f"config.walk_block_n must be 0 (all of d_state) or a power of two "
                             f">= 16, got {n}")
        if self.yp_recompute and self.tiles != 1:
            raise ValueError(f"config.yp_recompute needs config.tiles == 1 (the diagonal pair "
                             f"only), got tiles={self.tiles}")
        if self.tile > 128:
            raise ValueError(f"config.tile must be <= 128, got {self.tile}")
        if self.splits > MAX_SPLITS:
            raise ValueError(f"config.splits must be <= {MAX_SPLITS}, got {self.splits}")
        if spec is not None and spec.has_seq_idx:
            raise ValueError("config form 'chunk' does not take packed sequences (seq_idx); "
                             "use the walk's config (SSDConfig) or config=None")


# -- rendering -----------------------------------------------------------------------------
_IO = {"x_ptr", "z_ptr", "B_ptr", "C_ptr", "ckpt_ptr", "dckpt_ptr", "out_ptr", "yp_ptr", "dy_ptr",
       "dout_ptr", "dx_ptr", "dz_ptr"}


@functools.lru_cache(maxsize=None)
def kernel_params(spec: SSDSpec, kind: str) -> tuple:
    """(name, Triton signature type) of the kernel's parameters, in order."""
    z, D = spec.has_z, spec.has_D
    x_in = ["x_ptr"]
    if kind == "ccum":
        a = ["dt_ptr", "A_ptr"] + (["dtb_ptr"] if spec.has_dt_bias else []) + ["dtp_ptr", "cum_ptr"]
    elif kind in ("cst", "cstp"):
        a = x_in + ["B_ptr", "dtp_ptr", "cum_ptr"]
        if kind == "cst":
            a += (["init_ptr"] if spec.has_initial_state else []) + ["ckpt_ptr"]
            a += ["final_ptr"] if spec.return_final_states else []
        a += ["hsp_ptr", "psp_ptr"]
    elif kind in ("cout", "couty"):
        a = x_in + (["z_ptr"] if z else []) + ["B_ptr", "C_ptr"] + (["D_ptr"] if D else [])
        a += ["dtp_ptr", "cum_ptr", "ckpt_ptr", "out_ptr"]
        a += ["yp_ptr"] if kind == "couty" else []
    elif kind in ("cdst", "cdstp"):
        a = ["dout_ptr"] + (["z_ptr"] if z else []) + ["C_ptr", "dtp_ptr", "cum_ptr"]
        if kind == "cdst":
            a += ["dfinal_ptr"] if spec.return_final_states else []
            a += ["dckpt_ptr"] + (["dy_ptr", "yp_ptr", "dz_ptr"] if z else [])
            a += ["dinit_ptr"] if spec.has_initial_state else []
        a += ["hsp_ptr", "psp_ptr"]
    elif kind == "cdx":
        a = x_in + (["z_ptr", "yp_ptr", "dy_ptr"] if z else []) + ["B_ptr", "C_ptr"]
        a += (["D_ptr"] if D else []) + ["dtp_ptr", "cum_ptr", "ckpt_ptr", "dckpt_ptr"]
        a += ["dout_ptr", "dx_ptr"] + (["dz_ptr"] if z else []) + ["v_ptr", "u_ptr", "gx_ptr"]
        a += ["rp_ptr", "sig_ptr"]
        a += ["dD_ptr"] if D else []
    elif kind == "cdbc":
        a = x_in + (["dy_ptr"] if z else ["dout_ptr"]) + ["B_ptr", "C_ptr", "dtp_ptr", "cum_ptr"]
        a += ["ckpt_ptr", "dckpt_ptr", "dB_ptr", "dC_ptr", "v_ptr", "sig_ptr"]
    else:  # cdfin
        a = ["dt_ptr", "A_ptr"] + (["dtb_ptr"] if spec.has_dt_bias else [])
        a += ["v_ptr", "u_ptr", "gx_ptr", "rp_ptr", "sig_ptr", "ddt_ptr", "dA_ptr"]
        a += ["ddtb_ptr"] if spec.has_dt_bias else []
    a += ["L", "H", "P", "G", "hpg", "nc"]
    a += ["nseg", "spc", "nl", "seg_off"] if kind in _WALKS else []
    a += ["dt_lo", "dt_hi"] if kind in ("ccum", "cdfin") else []
    a += ["s_tb", "s_tl", "s_th"] if kind in ("ccum", "cdfin") else []
    if "x_ptr" in a:
        a += ["s_xb", "s_xl", "s_xh", "s_xp"]
    if {"B_ptr", "C_ptr"} & set(a):
        a += ["s_Bb", "s_Bl", "s_Bg", "s_Bn", "s_Cb", "s_Cl", "s_Cg", "s_Cn"]
    if "z_ptr" in a:
        a += ["s_zb", "s_zl", "s_zh", "s_zp"]
    return param_types(a, spec, _IO | ({"dB_ptr", "dC_ptr"} if kind == "cdbc" else set()))


# cdbc's shared memory at d_state 128 (sm_90 compile, one 64-step tile, 8 warps; the opt-in
# limit is 227 KB): stages 1 / 2 / 3 take 56 / 121 / 169 KB at x's bytes x padded headdim 128
# (bf16 at 64), 80 / 209 / 305 KB at 256 (bf16 at 128; fp32 at 64: 112 / 177 / 273), and
# fp32 at 128 (512) 160 / 289 KB. Its 3 stages were the fastest in sweep 1 (0.30 against 0.36
# ms at 2, ssd_1.3b).
_CDBC_STAGES = ((128, 3), (256, 2), (512, 1))


def default_config(spec: SSDSpec, batch: int, heads: int, sms: int = 132):
    """The fields' defaults (ssd_chunk_v2/sweep1 on an H100: one 64-step tile per chunk, each
    kernel's fastest warps and stages), cdbc's stages as many as fit its shared memory
    (_CDBC_STAGES), with sequence splits where the walks' (batch, head, channel block)
    programs are under 2 per SM: the largest power of two that keeps them at most 2 per SM
    (ssd_long: 64 programs, 4 splits). None where even one stage would not fit (x's bytes x
    padded headdim above 512: fp32 at headdim 256).
    From ssd_chunk_v2/sweep2 (H100, bf16, headdim 64, d_state 128):
    - where the sequence is split (few batch x head programs, as at batch 1), cout's and
      cdx's programs heads first in the grid: tiles first, the programs in flight all belong
      to one head, so each head re-reads the whole sequence's B and C (16 MB on ssd_long)
      after it has left L2. ssd_long: couty 0.90 -> 0.67 ms, cdx 1.74 -> 1.66. On ssd_1.3b
      (a batch's B and C: 1 MB) tiles first stays ahead (cdx 0.81 against 0.85).
    - cout (at its 1 stage: 132 registers against 152 at 2) capped at 128 registers where
      that spills at most 56 bytes (2-byte x at padded headdim <= 64): 4 programs per SM
      instead of 3; couty 0.67 -> 0.63 ms on ssd_long,
      0.34 -> 0.31 on ssd_1.3b. At headdim 128 the cap spills 344 bytes (untimed: left off).
    From ssd_chunk_v2/cdx_relief (H100, bf16, headdim 64, d_state 128): v_cdbc where the cap
    is taken (cdbc forms the entering state's part of d cum and sigma, cdx reads no state):
    cdx 1.68 -> 1.19 ms, cdbc 0.57 -> 0.80 on ssd_long (kernel sum 4.23 -> 3.98); 0.82 ->
    0.63 and 0.29 -> 0.41 on ssd_1.3b (1.90 -> 1.83). dz_walk lost there (cdst 0.45 -> 0.97
    ms). At headdim 128 both cdx and cdbc spill either way (untimed: left off)."""
    itemsize = getattr(torch, spec.dtype).itemsize
    width = itemsize * padded_headdim(spec)
    stages = next((st for w, st in _CDBC_STAGES if width <= w), None)
    if stages is None:
        return None
    programs = batch * heads * walk_programs(spec, SSDChunkConfig())
    splits = 1
    while splits < MAX_SPLITS and programs * splits * 2 <= 2 * sms:
        splits *= 2
    cap = itemsize == 2 and padded_headdim(spec) <= 64
    return SSDChunkConfig(splits=splits, cdbc_stages=stages, cout_regs=128 if cap else 0,
                          heads_inner=int(splits > 1), v_cdbc=int(cap))


def kernel_name(spec: SSDSpec, cfg: SSDChunkConfig, kind: str) -> str:
    return f"ssmgen_ssd_{kind}_{spec.short_name()}__{cfg.tag(kind)}"


def walk_block_p(spec: SSDSpec, cfg: SSDChunkConfig) -> int:
    return min(cfg.walk_block_p, padded_headdim(spec))


def walk_block_n(spec: SSDSpec, cfg: SSDChunkConfig) -> int:
    return min(cfg.walk_block_n or padded_state(spec), padded_state(spec))


def walk_programs(spec: SSDSpec, cfg: SSDChunkConfig) -> int:
    """A walk's programs per (segment, head, batch row): its channel blocks x state blocks."""
    return (triton.cdiv(spec.headdim, walk_block_p(spec, cfg))
            * (padded_state(spec) // walk_block_n(spec, cfg)))


def render_source(spec: SSDSpec, cfg: SSDChunkConfig, kind: str) -> str:
    return render.render(
        f"triton/ssd_chunk_{TEMPLATE_OF.get(kind, kind)}.py.jinja", spec_key=spec.key(),
        config_desc=repr(cfg), kernel_name=kernel_name(spec, cfg, kind),
        args=[n for n, _ in kernel_params(spec, kind)], pre=kind in ("cstp", "cdstp"),
        store_yp=kind == "couty", N=spec.d_state, NP=padded_state(spec),
        P2=padded_headdim(spec), headdim=spec.headdim, block_q=cfg.tile, tiles=cfg.tiles,
        block_p=walk_block_p(spec, cfg), block_n=walk_block_n(spec, cfg),
        heads_split=cfg.heads_split, dot_dtype=spec.dtype,
        has_D=spec.has_D, D_per_channel=spec.D_per_channel, has_z=spec.has_z,
        has_dt_bias=spec.has_dt_bias, dt_softplus=spec.dt_softplus,
        has_initial_state=spec.has_initial_state, return_final_states=spec.return_final_states,
        has_seq_idx=False, dy_walk=bool(cfg.dy_walk and spec.has_z),
        heads=getattr(cfg, f"{TEMPLATE_OF.get(kind, kind)}_heads", 1),
        heads_inner=bool(cfg.heads_inner), yp_recompute=bool(cfg.yp_recompute and spec.has_z),
        dz_walk=bool(cfg.dz_walk and spec.has_z), v_cdbc=bool(cfg.v_cdbc))


@functools.lru_cache(maxsize=None)
def kernel(spec: SSDSpec, cfg: SSDChunkConfig, kind: str):
    name = kernel_name(spec, cfg, kind)
    return getattr(render.load_module("triton", name, render_source(spec, cfg, kind)), name)


def launch_config(cfg: SSDChunkConfig, kind: str) -> dict:
    return cfg.launch(kind)  # as triton_ssd.launch_config (ssmgen.aot reads either)


def _launch(spec, cfg, kind, args, grid):
    launch_kernel(kernel(spec, cfg, kind), kernel_params(spec, kind), spec, cfg, kind, args,
                  grid, launch_config(cfg, kind), "tile, walk_block_p, walk_block_n")


# -- launching -----------------------------------------------------------------------------
def _common(c, spec: SSDSpec, cfg: SSDChunkConfig) -> dict:
    """Every kernel's inputs and sizes, with dt' and cum computed (ccum)."""
    b, L, H, G = c.batch, c.seqlen, c.heads, c.groups
    Q = cfg.block_q
    nc = triton.cdiv(L, Q)
    dev, f32 = c.x.device, torch.float32
    a = _args(c, spec)
    a.update(G=G, nc=nc, dtp_ptr=new((b, H, L), f32, dev), cum_ptr=new((b, H, L), f32, dev))
    _launch(spec, cfg, "ccum", a, (nc, H, b))
    return a


def _walk(spec, cfg, kind: str, a: dict, pre_from: int) -> None:
    """Runs a walk (cst, cdst) over the config's segments, after its pre-pass (kind + "p")
    over the segments pre_from .. pre_from + segments - 2: those the others start from (all
    but the last for cst, all but the first for cdst)."""
    b, H, nc = a["x_ptr"].shape[0], a["H"], a["nc"]
    nseg, spc = segments(cfg, nc)
    per_seg = walk_programs(spec, cfg)
    dev = a["x_ptr"].device
    a.update(nseg=nseg, spc=spc)
    if nseg > 1:
        a.update(hsp_ptr=new((b, H, nseg, spec.headdim, spec.d_state), torch.float32, dev),
                 psp_ptr=new((b, H, nseg), torch.float32, dev), nl=nseg - 1, seg_off=pre_from)
        _launch(spec, cfg, kind + "p", a, (per_seg * (nseg - 1), H, b))
    else:  # never read: any fp32 tensor of the call
        a.update(hsp_ptr=a["dtp_ptr"], psp_ptr=a["dtp_ptr"])
    a.update(nl=nseg, seg_off=0)
    _launch(spec, cfg, kind, a, (per_seg * nseg, H, b))


def _per_group(cfg: SSDChunkConfig, hpg: int, *fields: str) -> SSDChunkConfig:
    """cfg, with each of fields (a count that splits one group's heads: cout_heads,
    cdx_heads, heads_split) at 1 where it does not divide the group's hpg heads."""
    return dataclasses.replace(cfg, **{f: 1 for f in fields if hpg % getattr(cfg, f)})


def forward(c, spec: SSDSpec, cfg: SSDChunkConfig, for_backward: bool = False,
            checkpoints: bool = True):
    """(out, final state fp32 or None, the state entering each chunk (b, H, chunks, P, N) in
    x's dtype or None, saved or None): saved (1, b, L, H, P) holds y before the gate where z
    is given and a backward can follow. The states are always made (the output reads them);
    they are returned where checkpoints or for_backward."""
    check_launch(c)
    b, L, H, P, N = c.batch, c.seqlen, c.heads, c.headdim, c.d_state
    dev = c.x.device
    a = _common(c, spec, cfg)
    nc = a["nc"]
    out = new((b, L, H, P), c.x.dtype, dev)
    saved = (new((1, b, L, H, P), c.x.dtype, dev)
             if for_backward and saved_count(cfg, spec.has_z) else None)
    a.update(ckpt_ptr=new((b, H, nc, P, N), ckpt_dtype(spec), dev), out_ptr=out,
             yp_ptr=None if saved is None else saved[0],
             final_ptr=new((b, H, P, N), torch.float32, dev) if spec.return_final_states else None)
    if spec.has_initial_state:
        a["init_ptr"] = c.initial_states.to(torch.float32).contiguous()
    _walk(spec, cfg, "cst", a, pre_from=0)
    cc = _per_group(cfg, H // c.groups, "cout_heads")
    _launch(spec, cc, "couty" if saved is not None else "cout", a,
            (nc * cfg.tiles * (H // cc.cout_heads), 1, b))
    keep = checkpoints or for_backward
    return out, a["final_ptr"], a["ckpt_ptr"] if keep else None, saved


def saved_count(cfg, has_z: bool) -> int:
    """x-sized tensors the forward saves for the backward: y before the gate, with z (unless
    cdx forms it again: config yp_recompute)."""
    return int(has_z and not cfg.yp_recompute)


def backward(c, spec: SSDSpec, cfg: SSDChunkConfig, ckpt, dout, dfinal=None, saved=None) -> dict:
    """Every input's gradient from the forward's states (ckpt) and saved (y before the gate,
    with z); dt' and cum are computed again (ccum: 0.014 ms on ssd_1.3b). The walk's buffers
    (triton_ssd): the per-tile parts of dA, dD and d dt_bias are its per-block parts."""
    if saved_count(cfg, spec.has_z) and saved is None:
        raise ValueError(f"config {cfg.tag('cdx')}: the chunk form's backward with z reads the "
                         f"forward's y before the gate; run forward(..., for_backward=True)")
    b, L, H, P, N, G = c.batch, c.seqlen, c.heads, c.headdim, c.d_state, c.groups
    dev, f32 = c.x.device, torch.float32
    a = _common(c, spec, cfg)
    cfg = _per_group(cfg, H // G, "cdx_heads", "heads_split")
    nc, NT, hs = a["nc"], cfg.tiles, cfg.heads_split
    _state_grad_buffers(c, spec, a, nc, dfinal)
    _grad_buffers(c, spec, a, nc * NT)
    dout = dout.contiguous()
    a.update(ckpt_ptr=ckpt, dout_ptr=dout, sig_ptr=new((b, H, nc), f32, dev),
             dy_ptr=new((b, L, H, P), c.x.dtype, dev) if spec.has_z else None,
             # with yp_recompute cdx never reads it: an x-dtype tensor of the call stands in
             yp_ptr=dout if saved is None else saved[0])
    _walk(spec, cfg, "cdst", a, pre_from=1)
    # cdbc: heads_split fp32 partials, summed below, or dB / dC themselves
    part = (b, L, G, N) if hs == 1 else (hs, b, L, G, N)
    a.update(v_ptr=new((b, H, L), f32, dev), u_ptr=new((b, H, L), f32, dev),
             gx_ptr=new((b, H, L), f32, dev), rp_ptr=new((b, H, NT, L), f32, dev),
             dB_ptr=new(part, c.B.dtype if hs == 1 else f32, dev),
             dC_ptr=new(part, c.C.dtype if hs == 1 else f32, dev))
    _launch(spec, cfg, "cdx", a, (nc * NT * (H // cfg.cdx_heads), 1, b))
    # after cdx: cdbc reads its dy (dy_walk 0) and, with v_cdbc, adds to its d cum parts
    _launch(spec, cfg, "cdbc", a, (nc * NT, G * hs, b))
    _launch(spec, cfg, "cdfin", a, (nc, H, b))
    dB, dC = a["dB_ptr"], a["dC_ptr"]
    if hs > 1:
        dB, dC = dB.sum(0).to(c.B.dtype), dC.sum(0).to(c.C.dtype)
    return dict(_grads(spec, a, dB, dC), initial_states=a["dinit_ptr"])


CONFIG = SSDChunkConfig
