"""Triton backend of the SSD scan (Mamba-2): renders templates/triton/ssd_*.py.jinja
for an (SSDSpec, SSDConfig) pair and launches them.

Kernels (design and measurements: benchmarks/NOTES.md, "SSD kernels", "SSD pass 2 split"):
  fwd     one program per (channel block of a head, head, batch row) walks the sequence in
          blocks of block_q steps with the state in registers; tensor-core products per block;
          saves the state entering each block (the backward's checkpoints). Where no backward
          follows and no varlen states are asked for, it saves nothing (kind fwdo).
  dstate  the same walk from the end: the gradient of the state leaving each block.
  bwd     one program per (block, group of heads_per_program heads, batch row), all blocks in
          parallel: every input gradient from the two checkpoints of its block.
By default (config.bwd_kernels = 2) bwd is two kernels instead: bwdx (bwd without dB and dC)
and dbc, one program per (block, B/C group, batch row) summing dB and dC over the group's heads.
bwdx reads no forward checkpoint: the forward (as fwdy) also saves Yi, the entering state's part
of y, and pass 1 (as dstatey) the entering state's path to the leaving one per block.
With config.bwd_kernels = 3, pass 1 and bwdx are one walk (dwalk: the gradient of the state in
registers, read back by no one but dbc), then dfin (ddt, dA, d dt_bias from the walk's per
channel-block parts) and dbc.
With seq_idx (packed sequences), each kernel reads the block's seq_idx and the one of the step
before it: C B^T terms only within a sequence, the carried state (fwd) or its gradient (dstate)
restarts where a sequence starts.
The kernels' parameter lists are built here once (`kernel_params`) and used for the rendered
signature, the launch and ahead-of-time compilation. The buffers and grids below serve the CUDA
SSD kernels too (backends/cuda_ssd.py: the same algorithm and buffers; a CudaSSDConfig launches
through it).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
import triton

from ssmgen import render
from ssmgen.spec import SSDSpec

from . import triton_launch
from .buffers import new
from .config import IntConfig

TEMPLATES = ("triton/ssd_fwd.py.jinja", "triton/ssd_dstate.py.jinja", "triton/ssd_bwd.py.jinja",
             "triton/ssd_dbc.py.jinja", "triton/ssd_fsplit.py.jinja", "triton/ssd_bsplit.py.jinja",
             "triton/ssd_dwalk.py.jinja", "triton/ssd_dfin.py.jinja",
             "triton/ssd_common.py.jinja", "triton/ssd_macros.jinja")
KINDS = ("fwd", "dstate", "bwd")
# kernels that walk the sequence (with sequence splits); the others run every block at once
SEQUENTIAL = ("fwd", "fwdy", "fwdo", "dstate", "dstatey", "dwalk", "fsplit", "bsplit")
# pass 2 as one kernel (bwd) or two (config.bwd_kernels = 2): bwdx makes every gradient but dB
# and dC, dbc makes those summed over a group's heads (no per-head-group partials); or (3) pass 1
# and bwdx as one walk (dwalk), its per-step sums finished by dfin, and dbc
PASS2 = {1: ("bwd",), 2: ("bwdx", "dbc"), 3: ("dwalk", "dfin", "dbc")}
# the pre-pass each sequential kernel needs when its sequence is split (config.splits > 1)
PREPASS = {"fwd": "fsplit", "fwdy": "fsplit", "fwdo": "fsplit", "dstate": "bsplit",
           "dstatey": "bsplit", "dwalk": "bsplit"}
MAX_SPLITS = 64
MAX_GRID_YZ = 65535


@dataclass(frozen=True)
class SSDConfig(IntConfig):
    """block_q: steps per block (= checkpoint interval); block_p: channels per program of the
    sequential kernels (fwd, dstate); bwd_block_p: channels per inner step of bwd;
    heads_per_program: heads of one group per bwd program (C B^T shared, dB/dC summed);
    splits: segments of whole blocks the sequence is cut into for fwd and dstate (their own
    programs; a pre-pass gives each segment's starting state or gradient), at most one per
    block and MAX_SPLITS: time parallelism where batch * heads leave the GPU idle.
    bwd_kernels: pass 2 as one kernel (bwd) or two (PASS2): bwdx (bwd's block_p, heads, warps
    and stages) and dbc, all heads of a group per program with dbc_block_p channels per inner
    step; or three (3): pass 1 and bwdx as one walk (dwalk, walk_block_p channels per program,
    walk_warps, walk_stages; the config's splits), dfin and dbc."""

    block_q: int = 64
    block_p: int = 32
    fwd_warps: int = 4
    fwd_stages: int = 2
    bwd_block_p: int = 64
    heads_per_program: int = 4
    bwd_warps: int = 8
    bwd_stages: int = 1
    splits: int = 1
    # fields added later go below with a default, so older encodings still decode
    bwd_kernels: int = 1
    dbc_block_p: int = 64
    dbc_warps: int = 4
    dbc_stages: int = 1
    walk_block_p: int = 64
    walk_warps: int = 4
    walk_stages: int = 1

    def tag(self, kind: str) -> str:
        # splits is a launch parameter: the kernels do not depend on it
        if kind in ("bwd", "bwdx"):
            return (f"q{self.block_q}_p{self.bwd_block_p}_h{self.heads_per_program}"
                    f"_w{self.bwd_warps}_s{self.bwd_stages}")
        if kind == "dbc":
            return f"q{self.block_q}_p{self.dbc_block_p}_w{self.dbc_warps}_s{self.dbc_stages}"
        if kind == "dwalk":
            return f"q{self.block_q}_p{self.walk_block_p}_w{self.walk_warps}_s{self.walk_stages}"
        if kind == "dfin":  # one warp (launch_config); reads one part per walk channel block
            return f"q{self.block_q}_p{self.walk_block_p}_w1"
        return f"q{self.block_q}_p{self.block_p}_w{self.fwd_warps}_s{self.fwd_stages}"

    def check(self, spec: SSDSpec | None = None) -> None:
        """spec: unused here (Triton reports shared memory at compile time, see _launch); the
        CUDA config checks its layout against it."""
        self.check_powers(choices=("bwd_kernels",))
        for name in ("block_q", "block_p", "bwd_block_p", "dbc_block_p", "walk_block_p"):
            if getattr(self, name) < 16:  # tl.dot's smallest tile edge
                raise ValueError(f"config.{name} must be >= 16, got {getattr(self, name)}")
        if self.bwd_kernels not in PASS2:
            raise ValueError(f"config.bwd_kernels must be one of {sorted(PASS2)}, got "
                             f"{self.bwd_kernels}")
        if self.splits > MAX_SPLITS:
            raise ValueError(f"config.splits must be <= {MAX_SPLITS}, got {self.splits}")
        if self.block_q > 128:
            raise ValueError(f"config.block_q must be <= 128 (a [block_q, block_q] fp32 tile is "
                             f"held in registers), got {self.block_q}")


def padded_state(spec: SSDSpec) -> int:
    return max(16, triton.next_power_of_2(spec.d_state))


def padded_headdim(spec: SSDSpec) -> int:
    return max(16, triton.next_power_of_2(spec.headdim))


def default_config(spec: SSDSpec, batch: int = 1, heads: int = 64):
    """The chunk form (backends/triton_ssd_chunk.py: its default_config) where it was
    measured faster than the walk: no packed sequences, d_state up to 128; with sequence
    splits where batch x heads is small (ssd_long). Also for the inference forward since
    ssd_chunk_v2/cdx_relief (H100, one process: ssd_long 1.05 against the walk's 1.27 ms,
    ssd_1.3b 0.45 against 0.53), at the cost of the chunk states it writes and reads (x's
    dtype, (b, H, chunks, P, N): 2x x's bytes at headdim 64, d_state 128, chunk 64; the
    walk's inference forward writes none). Else the walk (walk_config): packed sequences,
    d_state above 128, and where the chunk form's defaults would not fit in shared memory
    (fp32 at headdim 256). See benchmarks/NOTES.md, "SSD in chunk form" and the rounds after."""
    from . import triton_ssd_chunk

    if not spec.has_seq_idx and padded_state(spec) <= 128:
        cfg = triton_ssd_chunk.default_config(spec, batch, heads)
        if cfg is not None:
            return cfg
    return walk_config(spec, batch, heads)


def walk_config(spec: SSDSpec, batch: int = 1, heads: int = 64) -> SSDConfig:
    """The walk's config. Heuristic from the H100 kernel sweeps (benchmarks/results/*/ssd_v1/kernel_sweep.json,
    d_state 128, headdim 64): blocks of 32 steps (64 and 128 spill in bwd: 2.5 ms at 32 vs 4.6
    and 8.5 on ssd_1.3b); the sequential kernels take the widest channel block that still
    gives >= 2 programs per SM (ssd_1.3b: 64 channels, 0.67 ms), and where none does, sequence
    splits (below). Pass 2 split in two kernels (ssd_pass2/sweep.json, ssd_1.3b: one kernel
    2.39 ms + 0.15 of partial sums; bwdx 1.76 (64 channels per step, 8 heads per program,
    4 warps; 1.78 at 4 heads, 1.94 at 2 stages) + dbc 0.55 (64 channels, 4 warps, 2 stages));
    bwdx 1.40 since it reads Yi and sigma instead of the checkpoint (ssd_yi_v1/sweep.json).
    Up to d_state 128, pass 1 and bwdx as one walk (bwd_kernels=3; ssd_walk_v1/sweep.json,
    ssd_1.3b: dwalk 1.37 ms at 64 channels, 4 warps, 1 stage against dstatey 0.56 + bwdx 1.23;
    at 32 channels or 8 warps 1.7-3.7, and at blocks of 64 steps 2.2-4.8). At d_state 256
    (ssd_dstate_v1, ssd_1.3b's sizes at N=256) the walk at 8 warps too: 5.60 ms of kernels
    (5.67 at 4 warps, 6.94 at 32 channels) against the split pass 2's 6.14; at d_state 64 the
    walk 2.24 against 2.49. Above 256 (the walk's [channels, d_state] fp32 gradient twice as
    large again) unmeasured, so the split pass 2 stays there."""
    P2 = padded_headdim(spec)
    big = padded_state(spec) >= 256  # twice the registers per tile
    huge = padded_state(spec) > 256
    splits = 1
    if batch * heads * triton.cdiv(spec.headdim, 16) >= 2 * 132:
        bp = next(c for c in (64, 32, 16)
                  if c == 16 or (c <= P2 and batch * heads * triton.cdiv(spec.headdim, c) >= 2 * 132))
    else:
        # even 16 channels per program leave fewer than 2 programs per SM: split the sequence
        # instead, with the widest channel blocks, into enough segments for ~3 programs per SM
        # (ssd_split_v1/split_sweep.json, ssd_long, batch 1: fwd / dstate 3.36 / 1.54 ms at 16
        # channels without splits; 1.62 / 1.20 at 64 channels and 8 segments; at 16 channels
        # splits made fwd slower, 3.9-4.2 ms)
        bp = min(64, P2)
        programs = batch * heads * triton.cdiv(spec.headdim, bp)
        while programs * splits < 3 * 132 and splits < MAX_SPLITS:
            splits *= 2
    return SSDConfig(block_q=32, block_p=bp, fwd_warps=8 if big else 4, fwd_stages=2,
                     bwd_block_p=min(P2, 64), heads_per_program=8, bwd_warps=8 if big else 4,
                     splits=splits, bwd_kernels=2 if huge else 3, dbc_block_p=min(P2, 64),
                     dbc_warps=8 if big else 4, dbc_stages=2, walk_block_p=min(P2, 64),
                     walk_warps=8 if big else 4, walk_stages=1)


# -- rendering -----------------------------------------------------------------------------
_TY = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_IO = {"x_ptr", "z_ptr", "B_ptr", "C_ptr", "out_ptr", "dout_ptr", "dx_ptr", "dz_ptr",
       "ckpt_ptr", "dckpt_ptr", "yi_ptr", "yp_ptr"}
_STRIDES = {"x": "xlhp", "z": "zlhp"}


@functools.lru_cache(maxsize=None)
def kernel_params(spec: SSDSpec, kind: str) -> tuple:
    """(name, Triton signature type) of the kernel's parameters, in order (the CUDA SSD kernels
    type the same names for C). Cached: every launch of either backend reads it."""
    a = ["x_ptr", "dt_ptr", "A_ptr", "B_ptr", "C_ptr"]
    a += [n for n, on in (("D_ptr", spec.has_D), ("z_ptr", spec.has_z),
                          ("dtb_ptr", spec.has_dt_bias), ("seq_ptr", spec.has_seq_idx)) if on]
    if kind in ("fwd", "fwdy", "fwdo"):  # fwdy: fwd that also saves what bwdx reads; fwdo:
        # fwd that saves nothing (no backward follows)
        a += ["init_ptr"] if spec.has_initial_state else []
        a += ["out_ptr"] + (["ckpt_ptr"] if kind != "fwdo" else [])
        a += (["yi_ptr"] + (["yp_ptr"] if spec.has_z else [])) if kind == "fwdy" else []
        a += ["final_ptr"] if spec.return_final_states else []
    elif kind in ("dstate", "dstatey"):  # dstatey: dstate that also gives bwdx its sigma
        a += ["dout_ptr"] + (["dfinal_ptr"] if spec.return_final_states else [])
        a += ["dckpt_ptr"] + (["dinit_ptr"] if spec.has_initial_state else [])
        a += ["ckpt_ptr", "sig_ptr"] if kind == "dstatey" else []
    elif kind == "dwalk":  # pass 1 and bwdx in one walk
        a += ["dout_ptr", "yi_ptr"] + (["yp_ptr"] if spec.has_z else [])
        a += ["dfinal_ptr"] if spec.return_final_states else []
        a += ["ckpt_ptr", "dckpt_ptr"] + (["dinit_ptr"] if spec.has_initial_state else [])
        a += ["dx_ptr"] + (["dz_ptr"] if spec.has_z else []) + ["rp_ptr", "gp_ptr"]
        a += ["dD_ptr"] if spec.has_D else []
    elif kind == "dfin":
        a += ["rp_ptr", "gp_ptr", "ddt_ptr", "dA_ptr"] + (["ddtb_ptr"] if spec.has_dt_bias else [])
    elif kind == "bsplit":
        a += ["dout_ptr"]
    elif kind == "fsplit":
        pass  # inputs, then the segments' buffers below
    elif kind == "dbc":
        a += ["dout_ptr", "ckpt_ptr", "dckpt_ptr", "dB_ptr", "dC_ptr"]
    elif kind == "bwd":
        a += ["dout_ptr", "ckpt_ptr", "dckpt_ptr", "dx_ptr", "ddt_ptr"]
        a += ["dz_ptr"] if spec.has_z else []
        a += ["dB_ptr", "dC_ptr", "dA_ptr"]
        a += [n for n, on in (("dD_ptr", spec.has_D), ("ddtb_ptr", spec.has_dt_bias)) if on]
    else:  # bwdx: bwd without dB and dC (dbc makes them), reading Yi and sigma, not the
        # checkpoint
        a += ["dout_ptr", "yi_ptr"] + (["yp_ptr"] if spec.has_z else [])
        a += ["dckpt_ptr", "sig_ptr", "dx_ptr", "ddt_ptr"]
        a += ["dz_ptr"] if spec.has_z else []
        a += ["dA_ptr"]
        a += [n for n, on in (("dD_ptr", spec.has_D), ("ddtb_ptr", spec.has_dt_bias)) if on]
    # the segments' states / gradients from zero and their decays (fp32), written by the
    # pre-pass, read by the main kernel
    a += ["hsp_ptr", "psp_ptr"] if kind in SEQUENTIAL else []
    a += ["L", "H", "P", "hpg", "nblk"]
    a += {"bwd": ["NHB"], "bwdx": [], "dbc": ["G"], "dfin": []}.get(kind, ["nseg", "spb"])
    a += ["dt_lo", "dt_hi"]
    a += ["s_xb", "s_xl", "s_xh", "s_xp", "s_tb", "s_tl", "s_th"]
    a += ["s_Bb", "s_Bl", "s_Bg", "s_Bn", "s_Cb", "s_Cl", "s_Cg", "s_Cn"]
    a += ["s_zb", "s_zl", "s_zh", "s_zp"] if spec.has_z else []
    a += ["s_sb", "s_sl"] if spec.has_seq_idx else []
    return param_types(a, spec, _IO | ({"dB_ptr", "dC_ptr"} if kind == "dbc" else set()))


def param_types(names, spec: SSDSpec, io_names) -> tuple:
    """(name, Triton signature type) of SSD kernel parameters: the pointers in io_names in x's
    dtype, dt's and ddt's in dt's, seq_idx's int32, other pointers fp32; dt_lo / dt_hi fp32,
    other scalars int32 (shared by the chunk form's kernels)."""
    io = "*" + _TY[spec.dtype]

    def typ(n):
        if n in ("dt_lo", "dt_hi"):
            return "fp32"
        if not n.endswith("_ptr"):
            return "i32"
        if n in io_names:
            return io
        if n in ("dt_ptr", "ddt_ptr"):
            return "*" + _TY[spec.dt_dtype]
        if n == "seq_ptr":
            return "*i32"
        return "*fp32"

    return tuple((n, typ(n)) for n in names)


def kernel_name(spec: SSDSpec, cfg: SSDConfig, kind: str) -> str:
    return f"ssmgen_ssd_{kind}_{spec.short_name()}__{cfg.tag(kind)}"


_BLOCK_P = {"bwd": "bwd_block_p", "bwdx": "bwd_block_p", "dbc": "dbc_block_p",
            "dwalk": "walk_block_p", "dfin": "walk_block_p"}
# kinds rendered from another kind's template
TEMPLATE_OF = {"bwdx": "bwd", "fwdy": "fwd", "fwdo": "fwd", "dstatey": "dstate"}


def render_source(spec: SSDSpec, cfg: SSDConfig, kind: str) -> str:
    NP = padded_state(spec)
    return render.render(
        f"triton/ssd_{TEMPLATE_OF.get(kind, kind)}.py.jinja", spec_key=spec.key(),
        config_desc=repr(cfg), kernel_name=kernel_name(spec, cfg, kind),
        args=[n for n, _ in kernel_params(spec, kind)], split_bc=kind == "bwdx",
        store_yi=kind == "fwdy", store_ckpt=kind != "fwdo", store_sigma=kind == "dstatey",
        N=spec.d_state, NP=NP, block_q=cfg.block_q,
        block_p=getattr(cfg, _BLOCK_P.get(kind, "block_p")),
        heads_per_program=cfg.heads_per_program, dot_dtype=spec.dtype,
        has_D=spec.has_D, D_per_channel=spec.D_per_channel, has_z=spec.has_z,
        has_dt_bias=spec.has_dt_bias, dt_softplus=spec.dt_softplus,
        has_initial_state=spec.has_initial_state, return_final_states=spec.return_final_states,
        has_seq_idx=spec.has_seq_idx)


def kernel(spec: SSDSpec, cfg: SSDConfig, kind: str):
    # splits is a launch parameter: one kernel for every count
    return _kernel(spec, cfg if cfg.splits == 1 else dataclasses.replace(cfg, splits=1), kind)


@functools.lru_cache(maxsize=None)
def _kernel(spec: SSDSpec, cfg: SSDConfig, kind: str):
    cfg.check()
    name = kernel_name(spec, cfg, kind)
    return getattr(render.load_module("triton", name, render_source(spec, cfg, kind)), name)


def launch_config(cfg: SSDConfig, kind: str) -> dict:
    if kind in ("bwd", "bwdx"):
        return dict(num_warps=cfg.bwd_warps, num_stages=cfg.bwd_stages)
    if kind == "dbc":
        return dict(num_warps=cfg.dbc_warps, num_stages=cfg.dbc_stages)
    if kind == "dwalk":
        return dict(num_warps=cfg.walk_warps, num_stages=cfg.walk_stages)
    if kind == "dfin":
        return dict(num_warps=1, num_stages=1)  # [block_q] vectors
    return dict(num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages)


# -- launching -----------------------------------------------------------------------------
def heads_per_program(cfg: SSDConfig, hpg: int) -> int:
    """bwd's heads per program: the config's, cut to a divisor of the heads per group."""
    return math.gcd(cfg.heads_per_program, hpg)


def check_launch(c) -> None:
    """Limits of these kernels that argument validation does not know about."""
    if c.batch > MAX_GRID_YZ:
        raise ValueError(f"x: batch={c.batch} exceeds the SSD kernels' limit of {MAX_GRID_YZ} "
                         f"batch rows per call (CUDA's grid z limit); split the batch")
    if c.heads > MAX_GRID_YZ:
        raise ValueError(f"x: heads={c.heads} exceeds the SSD kernels' limit of {MAX_GRID_YZ}")
    for name in ("x", "z", "B", "C", "dt", "seq_idx"):
        t = getattr(c, name)
        if t is not None and sum((n - 1) * s for n, s in zip(t.shape[1:], t.stride()[1:])) >= 2**31:
            raise ValueError(f"{name}: one batch row spans >= 2**31 elements; the SSD kernels "
                             f"index within a row in 32 bits")


def _args(c, spec: SSDSpec) -> dict:
    f32 = torch.float32
    a = dict(x_ptr=c.x, dt_ptr=c.dt, A_ptr=c.A.to(f32).contiguous(), B_ptr=c.B, C_ptr=c.C,
             L=c.seqlen, H=c.heads, P=c.headdim, hpg=c.heads // c.groups,
             dt_lo=c.dt_limit[0], dt_hi=c.dt_limit[1])
    if spec.has_D:
        a["D_ptr"] = c.D.to(f32).contiguous()
    if spec.has_z:
        a["z_ptr"] = c.z
        a.update(zip(("s_zb", "s_zl", "s_zh", "s_zp"), c.z.stride()))
    if spec.has_dt_bias:
        a["dtb_ptr"] = c.dt_bias.to(f32).contiguous()
    if spec.has_seq_idx:
        a["seq_ptr"] = c.seq_idx
        a.update(zip(("s_sb", "s_sl"), c.seq_idx.stride()))
    a.update(zip(("s_xb", "s_xl", "s_xh", "s_xp"), c.x.stride()))
    a.update(zip(("s_tb", "s_tl", "s_th"), c.dt.stride()))
    a.update(zip(("s_Bb", "s_Bl", "s_Bg", "s_Bn"), c.B.stride()))
    a.update(zip(("s_Cb", "s_Cl", "s_Cg", "s_Cn"), c.C.stride()))
    return a


def _launch(spec, cfg, kind, args, grid):
    if getattr(cfg, "backend", "triton") == "cuda":
        from . import cuda_ssd

        check_args(kernel_params(spec, kind), args)
        return cuda_ssd.launch(spec, cfg, kind, args, grid)
    launch_kernel(kernel(spec, cfg, kind), kernel_params(spec, kind), spec, cfg, kind, args,
                  grid, launch_config(cfg, kind), "block_q, block_p / bwd_block_p")


def check_args(params, args) -> list:
    """The arguments in the kernel's order; a missing one is the launcher's bug."""
    names = [n for n, _ in params]
    missing = [n for n in names if n not in args]
    assert not missing, f"launcher lacks kernel arguments {missing}"
    return [args[n] for n in names]


def launch_kernel(fn, params, spec, cfg, kind, args, grid, options, sizes: str) -> None:
    """Launches one SSD Triton kernel (this module's or the chunk form's); a config that does
    not fit the GPU (found when it compiles, before any launch) raises naming the config and
    the fields (sizes) that shrink it."""
    values = check_args(params, args)
    try:
        triton_launch.launch(fn, grid, values, **options)
    except triton.runtime.errors.OutOfResources as e:
        raise ValueError(f"config {cfg.tag(kind)}: the {kind} kernel does not fit this GPU at "
                         f"d_state {spec.d_state}, headdim {spec.headdim}, {spec.dtype} ({e}); "
                         f"use a smaller {sizes} or fewer stages") from e


def ckpt_dtype(spec: SSDSpec) -> torch.dtype:
    # the state enters the tensor-core products in the input dtype: checkpoints store that
    return getattr(torch, spec.dtype)


def segments(cfg, nblk: int) -> tuple:
    """(segments, blocks per segment) of a sequence of nblk blocks under the config's splits
    (a CUDA config has none): no empty segment."""
    spb = triton.cdiv(nblk, max(1, min(getattr(cfg, "splits", 1), nblk)))
    return triton.cdiv(nblk, spb), spb


def _split_buffers(c, spec, cfg, kind: str, a: dict, nblk: int) -> int:
    """Adds the segments' buffers and sizes to a and runs the kind's pre-pass (none for one
    segment); returns the segment count."""
    b, H, P, N = c.batch, c.heads, c.headdim, c.d_state
    nseg, spb = segments(cfg, nblk)
    dev = c.x.device
    if nseg > 1:
        a.update(hsp_ptr=new((b, H, nseg, P, N), torch.float32, dev),
                 psp_ptr=new((b, H, nseg), torch.float32, dev))
    else:  # never read: any fp32 tensor of the call
        a.update(hsp_ptr=a["A_ptr"], psp_ptr=a["A_ptr"])
    a.update(nseg=nseg, spb=spb, nblk=nblk)
    if nseg > 1:
        _launch(spec, cfg, PREPASS[kind], a, (triton.cdiv(P, cfg.block_p) * (nseg - 1), H, b))
    return nseg


def saved_count(cfg, has_z: bool) -> int:
    """How many x-sized tensors the forward saves for the backward under cfg: Yi and (with z)
    y before the gate for the split pass 2 and the walk, none for the one-kernel pass 2 and
    CUDA."""
    return (1 + has_z) if saves_yi(cfg) else 0


def saves_yi(cfg) -> bool:
    """Whether the backward under cfg reads Yi (the split pass 2 or the walk; a CUDA config has
    one kernel)."""
    return getattr(cfg, "bwd_kernels", 1) in (2, 3)


def forward(c, spec: SSDSpec, cfg: SSDConfig, for_backward: bool = False,
            checkpoints: bool = True):
    """(out (batch, L, heads, headdim) x's dtype, final state fp32 or None, checkpoints or
    None, saved or None). for_backward: where the config's backward reads them (saves_yi), also
    save (saved[0]) Yi = exp(cum_i) C S^T, the entering state's part of y, and with z (saved[1])
    y before the gate, each in x's layout and dtype. checkpoints: whether to save the state
    entering each block and return it (always with for_backward); without, a Triton config runs
    fwdo, which stores only out (and the final state), and None is returned for them."""
    check_launch(c)
    b, L, H, P, N = c.batch, c.seqlen, c.heads, c.headdim, c.d_state
    nblk = triton.cdiv(L, cfg.block_q)
    dev = c.x.device
    out = new((b, L, H, P), c.x.dtype, dev)
    keep = checkpoints or for_backward
    # a CUDA config's forward writes them anyway (its kernel has no such switch)
    ckpt = (new((b, H, nblk, P, N), ckpt_dtype(spec), dev)
            if keep or getattr(cfg, "backend", "triton") != "triton" else None)
    final = new((b, H, P, N), torch.float32, dev) if spec.return_final_states else None
    saved = (new((1 + spec.has_z, *out.shape), out.dtype, dev) if for_backward and saves_yi(cfg)
             else None)
    kind = "fwdo" if ckpt is None else "fwd" if saved is None else "fwdy"
    a = _args(c, spec)
    a.update(out_ptr=out, ckpt_ptr=ckpt, final_ptr=final, nblk=nblk)
    if saved is not None:
        a.update(yi_ptr=saved[0], yp_ptr=saved[-1])
    if spec.has_initial_state:
        a["init_ptr"] = c.initial_states.to(torch.float32).contiguous()
    nseg = _split_buffers(c, spec, cfg, kind, a, nblk)
    _launch(spec, cfg, kind, a, (triton.cdiv(P, cfg.block_p) * nseg, H, b))
    return out, final, ckpt if keep else None, saved


def _state_grad_buffers(c, spec: SSDSpec, a: dict, nblk: int, dfinal) -> None:
    """Into a, what walks the state gradient (pass 1 or the walk) reads and writes: the final
    state's gradient (zeros where the loss does not reach it), the gradient leaving each block
    (like the checkpoints) and the initial state's gradient."""
    b, H, P, N = c.batch, c.heads, c.headdim, c.d_state
    dev, f32 = c.x.device, torch.float32
    a.update(dckpt_ptr=new((b, H, nblk, P, N), ckpt_dtype(spec), dev),
             dinit_ptr=new((b, H, P, N), f32, dev) if spec.has_initial_state else None)
    if spec.return_final_states:
        a["dfinal_ptr"] = (torch.zeros(b, H, P, N, dtype=f32, device=dev) if dfinal is None
                           else dfinal.to(f32).contiguous())


def _grad_buffers(c, spec: SSDSpec, a: dict, nblk: int, d_parts: int = 1) -> None:
    """Into a, the buffers of the gradients pass 2 (or the walk) writes per step or per block:
    dx, dz, ddt, and the per-block parts of dA, d dt_bias and dD (d_parts per head and block
    for a per-head D: one per channel block of the walk)."""
    b, L, H, P = c.batch, c.seqlen, c.heads, c.headdim
    dev, f32 = c.x.device, torch.float32
    a.update(dx_ptr=new((b, L, H, P), c.x.dtype, dev), ddt_ptr=new((b, L, H), c.dt.dtype, dev),
             dz_ptr=new((b, L, H, P), c.x.dtype, dev) if spec.has_z else None,
             dA_ptr=new((b, nblk, H), f32, dev),
             dD_ptr=new((b, nblk, H, P if spec.D_per_channel else d_parts), f32, dev)
             if spec.has_D else None,
             ddtb_ptr=new((b, nblk, H), f32, dev) if spec.has_dt_bias else None)


def _grads(spec: SSDSpec, a: dict, dB, dC) -> dict:
    """The gradients in the buffers of _grad_buffers, their per-block parts summed."""
    dD, ddtb = a["dD_ptr"], a["ddtb_ptr"]
    if dD is not None:
        dD = dD.sum((0, 1) if spec.D_per_channel else (0, 1, 3))
    return dict(x=a["dx_ptr"], dt=a["ddt_ptr"], z=a["dz_ptr"], A=a["dA_ptr"].sum((0, 1)), B=dB,
                C=dC, D=dD, dt_bias=None if ddtb is None else ddtb.sum((0, 1)))


def backward_states(c, spec: SSDSpec, cfg: SSDConfig, nblk: int, dout, dfinal=None, ckpt=None):
    """Pass 1: (the gradient of the state leaving each block (like the checkpoints), the
    initial state's gradient fp32 or None, sigma or None). sigma (batch, blocks, heads) fp32:
    exp(total) <S_in, dS_out> per block, which the split pass 2 (saves_yi) reads; made where
    the checkpoints ckpt are given."""
    b, H, P = c.batch, c.heads, c.headdim
    a = _args(c, spec)
    _state_grad_buffers(c, spec, a, nblk, dfinal)
    npb = triton.cdiv(P, cfg.block_p)
    sig = None if ckpt is None else new((b, nblk, H, npb), torch.float32, c.x.device)
    kind = "dstate" if sig is None else "dstatey"
    a.update(nblk=nblk, dout_ptr=dout, ckpt_ptr=ckpt, sig_ptr=sig)
    nseg = _split_buffers(c, spec, cfg, kind, a, nblk)
    _launch(spec, cfg, kind, a, (npb * nseg, H, b))
    # sigma's parts summed over the channel blocks
    return a["dckpt_ptr"], a["dinit_ptr"], None if sig is None else sig.sum(-1)


def backward_grads(c, spec: SSDSpec, cfg: SSDConfig, ckpt, dckpt, dout, saved=None,
                   sig=None) -> dict:
    """Pass 2: the gradients of x, dt, A, B, C, D, z, dt_bias. saved, sig: what the forward
    saved for it (see forward) and pass 1's sigma, which the split form (saves_yi) reads
    instead of the checkpoints."""
    if saves_yi(cfg) and (saved is None or sig is None):
        raise ValueError(f"config {cfg.tag('bwdx')}: the split pass 2 reads the forward's Yi "
                         f"and pass 1's sigma; run forward(..., for_backward=True) and "
                         f"backward_states(..., ckpt=ckpt) and pass what they return")
    b, L, H, N, G = c.batch, c.seqlen, c.heads, c.d_state, c.groups
    nblk = ckpt.shape[2]
    hb = heads_per_program(cfg, H // G)
    if hb != cfg.heads_per_program:
        cfg = dataclasses.replace(cfg, heads_per_program=hb)
    nhb = H // hb
    split = saves_yi(cfg)
    # one kernel: fp32 partials per head group, summed below; split: dbc's sums over a group
    f32 = torch.float32
    dB = new((b, L, G, N) if split else (b, L, nhb, N), c.B.dtype if split else f32, c.x.device)
    dC = new(dB.shape, c.C.dtype if split else f32, c.x.device)
    a = _args(c, spec)
    _grad_buffers(c, spec, a, nblk)
    a.update(nblk=nblk, dout_ptr=dout, ckpt_ptr=ckpt, dckpt_ptr=dckpt, dB_ptr=dB, dC_ptr=dC,
             NHB=nhb, G=G)
    if split:
        a.update(yi_ptr=saved[0], yp_ptr=saved[-1], sig_ptr=sig)
        _launch(spec, cfg, "bwdx", a, (nblk, nhb, b))
        _launch(spec, cfg, "dbc", a, (nblk, G, b))
    else:
        _launch(spec, cfg, "bwd", a, (nblk, nhb, b))
        # the per-head-group partials summed over each B/C group's heads
        red = (b, L, G, nhb // G, N)
        dB, dC = dB.view(red).sum(3).to(c.B.dtype), dC.view(red).sum(3).to(c.C.dtype)
    return _grads(spec, a, dB, dC)


def backward_walk(c, spec: SSDSpec, cfg: SSDConfig, ckpt, dout, dfinal=None, saved=None) -> dict:
    """The backward under config.bwd_kernels = 3: pass 1 and bwdx as one walk (dwalk, with the
    sequence splits' pre-pass), dfin, dbc; saved: the forward's Yi (and y before the gate)."""
    if saved is None:
        raise ValueError(f"config {cfg.tag('dwalk')}: the walk reads the forward's Yi; run "
                         f"forward(..., for_backward=True) and pass what it saves")
    b, L, H, P, N, G = c.batch, c.seqlen, c.heads, c.headdim, c.d_state, c.groups
    nblk = ckpt.shape[2]
    dev, f32 = c.x.device, torch.float32
    npb = triton.cdiv(P, cfg.walk_block_p)
    a = _args(c, spec)
    _state_grad_buffers(c, spec, a, nblk, dfinal)
    _grad_buffers(c, spec, a, nblk, d_parts=npb)
    a.update(nblk=nblk, dout_ptr=dout, ckpt_ptr=ckpt, yi_ptr=saved[0], yp_ptr=saved[-1],
             # per (row, head, channel block) a run of L steps: a block's steps are contiguous
             # for the walk's stores and dfin's loads (ssd_ckpt_v1, against (b, L, H, npb):
             # dfin 0.046 -> 0.033 ms on ssd_1.3b, 0.091 -> 0.056 on ssd_long)
             rp_ptr=new((b, H, npb, L), f32, dev), gp_ptr=new((b, H, npb, L), f32, dev),
             dB_ptr=new((b, L, G, N), c.B.dtype, dev), dC_ptr=new((b, L, G, N), c.C.dtype, dev),
             G=G)
    nseg = _split_buffers(c, spec, cfg, "dwalk", a, nblk)
    _launch(spec, cfg, "dwalk", a, (npb * nseg, H, b))
    _launch(spec, cfg, "dfin", a, (nblk, H, b))
    _launch(spec, cfg, "dbc", a, (nblk, G, b))
    return dict(_grads(spec, a, a["dB_ptr"], a["dC_ptr"]), initial_states=a["dinit_ptr"])


def backward(c, spec: SSDSpec, cfg: SSDConfig, ckpt, dout, dfinal=None, saved=None) -> dict:
    """Every input's gradient (fp32 or the input's dtype; see ssmgen.ssd_kernels)."""
    dout = dout.contiguous()
    if getattr(cfg, "bwd_kernels", 1) == 3:
        return backward_walk(c, spec, cfg, ckpt, dout, dfinal, saved)
    dckpt, dinit, sig = backward_states(c, spec, cfg, ckpt.shape[2], dout, dfinal,
                                        ckpt if saves_yi(cfg) else None)
    g = backward_grads(c, spec, cfg, ckpt, dckpt, dout, saved, sig)
    g["initial_states"] = dinit
    return g


CONFIG = SSDConfig  # this backend's config class (ssmgen.ssd_kernels picks by backend)
