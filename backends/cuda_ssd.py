"""CUDA backend of the SSD scan (Mamba-2): renders templates/cuda/ssd_{fwd,dstate,bwd}.cu.jinja
for an (SSDSpec, CudaSSDConfig) pair, compiles and launches them through backends/cuda_runtime.

The kernels follow the Triton SSD kernels' algorithm and buffers (backends/triton_ssd.py, which
allocates the buffers and sets the grids for both backends): fwd walks the sequence in blocks
of block_q steps with the state in shared memory and saves the state entering each block,
dstate walks back for the state gradients, bwd takes every block in parallel. The tiles live
in shared memory rather than registers, so the tensor-core products (mma.sync m16n8k16, fp32
accumulate; fp32 FMAs for fp32 inputs) never spill, whatever the block sizes.
The parameter names are triton_ssd.kernel_params', typed here for C.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import asdict, dataclass

from ssmgen import render
from ssmgen.spec import SSDSpec

from . import cuda_runtime, triton_ssd
from .config import IntConfig

TEMPLATES = ("cuda/ssd_fwd.cu.jinja", "cuda/ssd_dstate.cu.jinja", "cuda/ssd_bwd.cu.jinja",
             "cuda/ssd_common.cuh.jinja", "cuda/ssd_macros.cuh.jinja", "cuda/common.cuh.jinja")
KINDS = triton_ssd.KINDS
SMEM_LIMIT = 227 * 1024   # opt-in shared memory per block on sm_90 (sm_80: 163 KB)
SMEM_PER_SM = 228 * 1024  # sm_90; each resident block also takes 1 KB of the driver's


@dataclass(frozen=True)
class CudaSSDConfig(IntConfig):
    """block_q: steps per block (= checkpoint interval); block_p: channels per block of
    threads in fwd and dstate; threads: their block size; bwd_block_p: channels per inner step
    of bwd; heads_per_program: heads of one group per bwd block (C B^T shared, dB/dC summed);
    bwd_threads: bwd's block size."""

    block_q: int = 32
    block_p: int = 32
    threads: int = 128
    bwd_block_p: int = 32
    heads_per_program: int = 4
    bwd_threads: int = 256

    backend = "cuda"
    PREFIX = "cuda"  # encode(): what tells a CUDA config's text from a Triton one

    def tag(self, kind: str) -> str:
        if kind == "bwd":
            return f"q{self.block_q}_p{self.bwd_block_p}_h{self.heads_per_program}_t{self.bwd_threads}"
        return f"q{self.block_q}_p{self.block_p}_t{self.threads}"

    def check(self, spec: SSDSpec | None = None) -> None:
        self.check_powers()
        for name in ("block_q", "block_p", "bwd_block_p"):
            if getattr(self, name) < 16:  # the tensor-core tile edge
                raise ValueError(f"config.{name} must be >= 16, got {getattr(self, name)}")
        if self.block_q > 128:
            raise ValueError(f"config.block_q must be <= 128, got {self.block_q}")
        for name in ("threads", "bwd_threads"):
            if not 32 <= getattr(self, name) <= 1024:
                raise ValueError(f"config.{name} must be in 32..1024, got {getattr(self, name)}")
        if spec is not None:
            for kind in KINDS:
                need = smem_layout(spec, self, kind)[1]
                if need > SMEM_LIMIT:
                    raise ValueError(f"config {self.tag(kind)}: the {kind} kernel needs {need} B of "
                                     f"shared memory at d_state {spec.d_state}, headdim "
                                     f"{spec.headdim}; the limit is {SMEM_LIMIT} B")


def padded_state(spec: SSDSpec) -> int:
    return -(-spec.d_state // 16) * 16


def default_config(spec: SSDSpec, batch: int = 1, heads: int = 64) -> CudaSSDConfig:
    """From the H100 sweep (benchmarks/results/*/ssd_cuda/sweep.json; d_state 128, headdim 64):
    blocks of 32 steps (64 makes bwd 1.6x slower, more than it saves in fwd); fwd / dstate 32
    channels per block with 128 threads while the grid gives >= 2 blocks per SM (ssd_1.3b:
    3.65 + 1.80 ms), else 16 channels with 256 threads (ssd_long, batch 1: 12.1 + 7.7); bwd 32
    channels per step, 4 heads per block (one dB / dC partial per 4 heads), 256 threads (4.55
    ms). Then smaller tiles until every kernel's shared memory fits (large d_state, fp32)."""
    P16 = -(-spec.headdim // 16) * 16
    wide = P16 >= 32 and batch * heads * -(-spec.headdim // 32) >= 2 * 132
    cfg = CudaSSDConfig(block_q=32, block_p=32 if wide else 16, threads=128 if wide else 256,
                        bwd_block_p=min(32, max(16, P16 & -P16)), heads_per_program=4,
                        bwd_threads=256)
    for field in ("bwd_block_p", "block_q", "block_p"):
        while (max(smem_layout(spec, cfg, k)[1] for k in KINDS) > SMEM_LIMIT
               and getattr(cfg, field) > 16):
            cfg = CudaSSDConfig(**{**asdict(cfg), field: getattr(cfg, field) // 2})
    return cfg


# -- rendering -----------------------------------------------------------------------------
_IO = {"float32": "float", "bfloat16": "bf16", "float16": "fp16"}
_MMA = {"bfloat16": "bf16", "float16": "f16", "float32": ""}


def _ld(cols: int, elem: int) -> int:
    """Row stride of a shared tile: 16 bytes of padding, so that a warp's fragment loads (8 rows
    x 4 words) fall into different banks."""
    return cols + 16 // elem


def min_blocks(smem: int, threads: int) -> int:
    """__launch_bounds__' blocks per SM: as many as shared memory allows, but registers no
    fewer than 128 per thread. Without it ptxas gave the forward 177 registers at 256 threads:
    one block per SM, and the driver then cut the shared-memory carveout to 64 KB (ncu, H100)."""
    return max(1, min(SMEM_PER_SM // (smem + 1024), 65536 // (128 * threads)))


def geometry(spec: SSDSpec, cfg: CudaSSDConfig, kind: str) -> dict:
    bp = cfg.bwd_block_p if kind == "bwd" else cfg.block_p
    t = 4 if spec.dtype == "float32" else 2
    NP = padded_state(spec)
    return dict(N=spec.d_state, NP=NP, P=spec.headdim, BQ=cfg.block_q, BP=bp,
                NT=cfg.bwd_threads if kind == "bwd" else cfg.threads,
                LDN=_ld(NP, t), LDP=_ld(bp, t), LDQ=_ld(cfg.block_q, t),
                LDNF=_ld(NP, 4), LDPF=_ld(bp, 4), LDQF=_ld(cfg.block_q, 4), tile_bytes=t)


def _buffers(spec: SSDSpec, kind: str) -> list:
    """(name, element type, rows, row stride key) of a kind's shared buffers."""
    T, F = "tile_t", "float"
    q = [("sC", T, "BQ", "LDN"), ("sB", T, "BQ", "LDN")]
    if kind == "fwd":
        q += [("sX", T, "BQ", "LDP"), ("sXs", T, "BQ", "LDP"), ("sW", T, "BQ", "LDQ"),
              ("sZ", T, "BQ", "LDP"),
              ("sS", T, "BP", "LDN"), ("fCB", F, "BQ", "LDQF"), ("fY", F, "BQ", "LDPF"),
              ("fS", F, "BP", "LDNF")]
    elif kind == "dstate":
        q = [("sC", T, "BQ", "LDN"), ("sX", T, "BQ", "LDP"), ("sZ", T, "BQ", "LDP"),
             ("fDo", F, "BQ", "LDPF"), ("fS", F, "BP", "LDNF"), ("sS", T, "BP", "LDN")]
    else:
        q += [("fCB", F, "BQ", "LDQF"), ("sWt", T, "BQ", "LDQ"), ("sX", T, "BQ", "LDP"),
              ("sDy", T, "BQ", "LDP"), ("sDye", T, "BQ", "LDP"), ("sXt", T, "BQ", "LDP"),
              ("sS", T, "BP", "LDN"), ("sdS", T, "BP", "LDN"), ("fDo", F, "BQ", "LDPF"),
              ("fCS", F, "BQ", "LDPF"), ("fBdS", F, "BQ", "LDPF"), ("fT", F, "BQ", "LDPF"),
              ("fDX", F, "BQ", "LDQF"), ("fdB", F, "BQ", "LDNF"), ("fdC", F, "BQ", "LDNF")]
    vecs = ["v_dt", "v_chain", "v_cum"]
    if kind == "bwd":
        vecs += ["v_e", "v_tail", "v_Oy", "v_Tx", "v_dcum", "v_colU", "v_T"]
    q += [(v, F, 1, "BQ") for v in vecs]
    q = [t for t in q if t[0] != "sZ" or spec.has_z]
    q += [("v_seq", "int", 1, "BQ"), ("v_int", "int", 1, 2)] if spec.has_seq_idx else []
    q += [("v_red", F, 1, 2)] if kind == "bwd" else []
    return q


@functools.lru_cache(maxsize=None)
def smem_layout(spec: SSDSpec, cfg: CudaSSDConfig, kind: str) -> tuple:
    """((name, type, byte offset), ...) and the total bytes; every buffer 128-byte aligned."""
    geo = geometry(spec, cfg, kind)
    size = {"tile_t": geo["tile_bytes"], "float": 4, "int": 4}
    off, out = 0, []
    for name, ty, rows, ld in _buffers(spec, kind):
        n = (geo.get(rows, rows) if isinstance(rows, str) else rows) * \
            (geo[ld] if isinstance(ld, str) else ld)
        out.append((name, ty, off))
        off += -(-n * size[ty] // 128) * 128
    return tuple(out), off


def _c_type(spec: SSDSpec, name: str) -> str:
    if name in ("dt_lo", "dt_hi"):
        return "const double"
    if not name.endswith("_ptr"):
        return "const long long"
    out = name in ("out_ptr", "ckpt_ptr", "final_ptr", "dckpt_ptr", "dinit_ptr", "dx_ptr",
                   "ddt_ptr", "dz_ptr", "dB_ptr", "dC_ptr", "dA_ptr", "dD_ptr", "ddtb_ptr")
    if name in triton_ssd._IO:
        t = "tile_t" if name in ("ckpt_ptr", "dckpt_ptr") else "io_t"
    elif name in ("dt_ptr", "ddt_ptr"):
        t = "float" if spec.dt_dtype == "float32" else "io_t"
    elif name == "seq_ptr":
        t = "int"
    else:
        t = "float"
    return f"{t}* __restrict__" if out else f"const {t}* __restrict__"


def kernel_name(spec: SSDSpec, cfg: CudaSSDConfig, kind: str, vec: bool = False) -> str:
    return f"ssmgen_ssd_cuda_{kind}_{spec.short_name()}__{cfg.tag(kind)}" + ("_v" if vec else "")


def vector_ok(spec: SSDSpec, args: dict) -> bool:
    """Whether a launch's tensors allow the vector variant: 16-byte rows of d_state and
    headdim, x / z / B / C contiguous in their last dim with every other stride and every
    pointer 16-byte aligned (the buffers the backend allocates always are)."""
    import torch

    vw = 16 // (4 if spec.dtype == "float32" else 2)
    if spec.d_state % vw or spec.headdim % vw:
        return False
    for X, last in (("x", "p"), ("z", "p"), ("B", "n"), ("C", "n")):
        t = args.get(f"{X}_ptr")
        if t is None:
            continue
        keys = [k for k in args if k.startswith(f"s_{X}") and len(k) == len(X) + 3]
        if args[f"s_{X}{last}"] != 1 or any(args[k] % vw for k in keys):
            return False
    return all(v.data_ptr() % 16 == 0 for k, v in args.items()
               if k.endswith("_ptr") and isinstance(v, torch.Tensor))


def render_source(spec: SSDSpec, cfg: CudaSSDConfig, kind: str, vec: bool = False) -> str:
    bufs, bufs_bytes = smem_layout(spec, cfg, kind)
    # headdim is compiled in (the macro P): its runtime twin gets another name
    params = [f"{_c_type(spec, n)} {'P_arg' if n == 'P' else n}"
              for n, _ in triton_ssd.kernel_params(spec, kind)]
    return render.render(
        f"cuda/ssd_{kind}.cu.jinja", spec_key=spec.key(), config_desc=repr(cfg),
        kernel_name=kernel_name(spec, cfg, kind, vec), params=params, bufs=bufs, vec=vec,
        io=_IO[spec.dtype], mma_type=_MMA[spec.dtype], dt_io=spec.dt_dtype != "float32",
        reverse=False, complex_A=False, HB=cfg.heads_per_program,
        has_D=spec.has_D, D_per_channel=spec.D_per_channel, has_z=spec.has_z,
        has_dt_bias=spec.has_dt_bias, dt_softplus=spec.dt_softplus,
        has_initial_state=spec.has_initial_state, return_final_states=spec.return_final_states,
        has_seq_idx=spec.has_seq_idx, **geometry(spec, cfg, kind),
        MINB=min_blocks(bufs_bytes, cfg.bwd_threads if kind == "bwd" else cfg.threads))


@functools.lru_cache(maxsize=None)
def _source(spec: SSDSpec, cfg: CudaSSDConfig, kind: str, vec: bool) -> str:
    cfg.check(spec)
    return render_source(spec, cfg, kind, vec)


def launch(spec: SSDSpec, cfg: CudaSSDConfig, kind: str, args: dict, grid) -> None:
    """triton_ssd's launch for a CUDA config: tensors as pointers, dt_lo / dt_hi as the bits of
    a double (the launcher passes 64-bit values)."""
    import torch

    vec = vector_ok(spec, args)
    src = _source(spec, cfg, kind, vec)
    smem = smem_layout(spec, cfg, kind)[1]
    dev = args["x_ptr"].device.index or 0
    fn = cuda_runtime.function(kernel_name(spec, cfg, kind, vec), src, dev, smem)
    vals = []
    for n, _ in triton_ssd.kernel_params(spec, kind):
        v = args[n]
        if isinstance(v, torch.Tensor):
            vals.append(v.data_ptr())
        elif n in ("dt_lo", "dt_hi"):
            vals.append(struct.unpack("<q", struct.pack("<d", float(v)))[0])
        else:
            vals.append(int(v))
    threads = cfg.bwd_threads if kind == "bwd" else cfg.threads
    cuda_runtime.launch(fn, grid, threads, smem, vals, dev)


CONFIG = CudaSSDConfig  # this backend's config class (ssmgen.ssd_kernels picks by backend)
