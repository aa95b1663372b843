"""CUDA backend: renders templates/cuda/{fwd,bwd}.cu.jinja for a (spec, config) pair, compiles
them with NVRTC at run time (backends/cuda_runtime.py) and launches them on tensors prepared by
ssmgen.inputs.

Design (see the templates' headers): each thread owns K states of one channel and walks the
sequence sequentially (one exp2 and a few FMAs per state and step, no scan tree); LPC lanes
share a channel, CPB = threads / LPC channels share a block and its shared-memory tiles of
TL steps. The backward recomputes states from chunk checkpoints (kept every TB steps in shared
memory) and walks each TB-step sub-tile in reverse with the decays and states in registers.
Time parallelism where batch * dim channels cannot fill the GPU: `splits` cuts the sequence into
that many runs of whole chunks, walked by their own blocks (grid z). A pre-pass per direction
(the forward's walk without outputs, `fsplit`; the adjoint's reverse walk, `bsplit`) leaves each
split's end state or adjoint from zero and its decay; every block of the main kernels combines
those of the splits before (after) it into its starting state (adjoint). That costs one more
exp2 per state and step, and buys splits times the blocks.
Everything the templates branch on comes from the ScanSpec; the config is five integers.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass

import torch

from ssmgen import render
from ssmgen.inputs import Call
from ssmgen.spec import DTYPE_BYTES, ScanSpec

from . import buffers, cuda_runtime
from .config import ScanConfigBase

TEMPLATES = ("cuda/fwd.cu.jinja", "cuda/bwd.cu.jinja", "cuda/bsplit.cu.jinja",
             "cuda/macros.cuh.jinja", "cuda/common.cuh.jinja")
# the pre-pass that a kind's kernel needs when its sequence is split
PREPASS = {"fwd": "fsplit", "bwd": "bsplit"}
MAIN = {v: k for k, v in PREPASS.items()}
SMEM_LIMIT = 227 * 1024   # opt-in shared memory per block on sm_80 / sm_90
MAX_HISTORY = 96          # fp32 registers of decays + states a backward sub-tile may keep
DEFAULT_CHUNK = 128       # checkpoint interval when neither the user nor a record gives one
MAX_INNER = 4             # inner chunks per chunk the tuner and the defaults use at most


_RANGES = {"threads": (32, 1024), "lpc": (1, 32), "tl": (4, 512), "tb": (1, 64),
           "splits": (0, 64), "ic": (0, 2048)}
AUTO_WARPS = 4   # auto splits: only where the grid gives fewer warps per SM than this
AUTO_WAVES = 4   # and then blocks for this many full waves of the GPU (fewer: tail effects)


@dataclass(frozen=True)
class KernelConfig:
    """threads per block; lpc lanes per channel (K = ceil(d_state / lpc) states per thread);
    tl steps per shared-memory tile; tb steps per backward sub-tile (forward ignores it);
    splits: runs of whole chunks the sequence is cut into, each walked by its own blocks (at
    most one per chunk), 0 for as many as fill the GPU (auto_splits); a launch parameter: the
    compiled kernels do not depend on it. ic: the backward takes each chunk as inner chunks of
    ic steps (0: the whole chunk), so that its shared memory holds ic steps' states while the
    forward keeps checkpoints only every chunk_len steps; each inner chunk after a chunk's first
    costs a walk from the checkpoint to it (forward ignores it)."""

    threads: int = 128
    lpc: int = 4
    tl: int = 32
    tb: int = 8
    splits: int = 0
    ic: int = 0

    def tag(self) -> str:
        """The compiled kernel's part of the name (what the source depends on)."""
        return (f"t{self.threads}_p{self.lpc}_l{self.tl}_b{self.tb}"
                + (f"_i{self.ic}" if self.ic else ""))

    def __repr__(self) -> str:   # (in every kernel's source: ic only where it is set)
        names = [f.name for f in dataclasses.fields(self) if f.name != "ic" or self.ic]
        return f"KernelConfig({', '.join(f'{n}={getattr(self, n)}' for n in names)})"

    def label(self) -> str:
        return self.tag() + {0: "_sauto", 1: ""}.get(self.splits, f"_s{self.splits}")

    @property
    def num_warps(self) -> int:
        return self.threads // 32

    @property
    def block_l(self) -> int:  # what the tuner compares with chunk_len
        return self.tl

    def check_fields(self, names=("threads", "lpc", "tl", "tb", "splits", "ic")) -> None:
        for name in names:
            lo, hi = _RANGES[name]
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo or v > hi or v & (v - 1):
                what = ("0 (auto) or a power of two in 1.." if lo == 0
                        else f"a power of two in {lo}..")
                raise ValueError(f"config.{name} must be {what}{hi}, got {v!r}")

    def check(self, spec: ScanSpec, kind: str = "bwd") -> None:
        self.check_fields()
        if self.tl > self.threads:
            raise ValueError(f"config.tl={self.tl} must be <= threads={self.threads}")
        if self.lpc > self.threads:
            raise ValueError(f"config.lpc={self.lpc} exceeds threads={self.threads}")
        if self.tl > spec.chunk_len:
            raise ValueError(f"config.tl={self.tl} must be <= chunk_len={spec.chunk_len}")
        if kind == "bwd":
            if self.tb > self.tl:
                raise ValueError(f"config.tb={self.tb} must be <= tl={self.tl}")
            if self.ic and not self.tl <= self.ic < spec.chunk_len:
                raise ValueError(f"config.ic={self.ic} must be 0 (the whole chunk) or in "
                                 f"tl={self.tl}..chunk_len/2={spec.chunk_len // 2}")
            hist = (2 * self.tb + 1) * states_per_thread(spec, self) * kc(spec)
            if hist > MAX_HISTORY:
                raise ValueError(f"config: a backward sub-tile keeps (2*tb+1)*K = {hist} fp32 "
                                 f"registers per thread (K={states_per_thread(spec, self)} states"
                                 f"{', complex' if spec.complex_A else ''}); at most "
                                 f"{MAX_HISTORY}: lower tb or lpc*K")
        need = smem_bytes(spec, self, kind)
        if need > SMEM_LIMIT:
            raise ValueError(f"config: the {kind} kernel needs {need} bytes of shared memory per "
                             f"block, more than {SMEM_LIMIT} (fewer threads, smaller tl/tb, or "
                             f"a shorter chunk_len)")


@dataclass(frozen=True)
class ScanConfig(ScanConfigBase):
    KERNEL = KernelConfig


def kc(spec: ScanSpec) -> int:
    return 2 if spec.complex_A else 1


def states_per_thread(spec: ScanSpec, k: KernelConfig) -> int:
    return -(-spec.d_state // k.lpc)


def per_thread(spec: ScanSpec, k: KernelConfig) -> int:
    """fp32 state values per thread (the tuner's ordering proxy)."""
    return states_per_thread(spec, k) * kc(spec) * 8


def _lpc_for(spec: ScanSpec, K: int) -> int:
    lpc = 1
    while lpc < 32 and -(-spec.d_state // lpc) > K:
        lpc *= 2
    return lpc


def default_config(spec: ScanSpec) -> ScanConfig:
    """Forward: 4 states per thread up to d_state 32, else 8 (16 past 256: at most 32 lanes per
    channel), and enough threads for 32 channels per block (B/C tiles are shared by a block's channels, so few channels per block re-read
    them). Backward: 4 states per thread (2 for complex A: its sub-tile keeps twice the
    registers), sub-tiles of 8 steps, 16 channels per block where registers and shared memory
    allow, else the first smaller block / sub-tile that fits. Tiles of 32 steps.
    Shape-specific choices (more lanes per channel when batch * dim is small) are the tuner's."""
    lpc = _lpc_for(spec, 4 if spec.d_state <= 32 else 8)
    tl = min(32, spec.chunk_len)
    # from 8 states per thread (d_state >= 128) 512 threads would cap registers at 128:
    # spills (d_state 256 on sm_80 once the forward carried its split bookkeeping)
    K = states_per_thread(spec, KernelConfig(lpc=lpc))
    threads = min(512 if K < 8 else 256, max(128, 32 * lpc))
    # the forward prefetches a B/C tile in registers, NP * tl / threads values each: keep <= 16
    ftl = min(tl, max(4, 1 << (16 * threads // (K * lpc)).bit_length() - 1))
    fwd = KernelConfig(threads=threads, lpc=lpc, tl=ftl, tb=8)
    return ScanConfig(fwd, _default_bwd(spec) or KernelConfig(threads=64, lpc=lpc, tl=tl, tb=1))


def _default_bwd(spec: ScanSpec):
    lpc = _lpc_for(spec, 2 if spec.complex_A else 4)
    tl = min(32, spec.chunk_len)
    # chunks past DEFAULT_CHUNK in inner chunks of that length: the same shared memory
    ic = DEFAULT_CHUNK if spec.chunk_len > DEFAULT_CHUNK else 0
    for threads in sorted({min(256, max(128, 16 * lpc)), 128, 64}, reverse=True):
        for tb in (8, 4, 2, 1):
            k = KernelConfig(threads=max(threads, lpc, tl), lpc=lpc, tl=tl, tb=min(tb, tl), ic=ic)
            try:
                k.check(spec, "bwd")
                return k
            except ValueError:
                continue
    return None


def default_chunk_len(spec: ScanSpec) -> int:
    """The memory rule's chunk (buffers.memory_chunk_len: checkpoints no larger than u; at most
    4 inner chunks of DEFAULT_CHUNK) where longer than DEFAULT_CHUNK, else DEFAULT_CHUNK, or
    the longest shorter interval whose default backward fits in shared memory."""
    longest = max(DEFAULT_CHUNK, min(buffers.memory_chunk_len(spec), MAX_INNER * DEFAULT_CHUNK))
    for chunk in dict.fromkeys((longest, DEFAULT_CHUNK, 64, 32, 16)):
        if _default_bwd(spec.replace(chunk_len=chunk)) is not None:
            return chunk
    return 16


def candidates(spec: ScanSpec, dim: int, seqlen: int) -> dict:
    """Pruned search space: {"fwd": [KernelConfig], "bwd": [(chunk_len, KernelConfig)]}."""
    def ok(k, s, kind):
        try:
            k.check(s, kind)
        except ValueError:
            return False
        return k.lpc <= max(1, 1 << max(0, math.ceil(math.log2(spec.d_state))))

    # forward K up to 16: with the states in runs over lanes (state_run) K 8 won at d_state
    # 64-128 (NOTES "CUDA forward v5"), so the next size up is worth a try
    fwd = [k for t, K, tl in itertools.product((64, 128, 256, 512), (1, 2, 4, 8, 16), (16, 32, 64))
           if ok(k := KernelConfig(t, _lpc_for(spec, K), tl, 8), spec, "fwd")]
    fwd = list(dict.fromkeys(fwd))
    bwd = []
    # chunks up to the memory rule's (buffers.memory_chunk_len); past DEFAULT_CHUNK also as
    # inner chunks (at most MAX_INNER per chunk: the walks to them grow as their count squared)
    mem = min(buffers.memory_chunk_len(spec), MAX_INNER * DEFAULT_CHUNK)
    for chunk in sorted({64, 128, 256, max(256, mem)}):
        if chunk > max(64, 1 << max(0, (seqlen - 1).bit_length())):
            continue
        s = spec.replace(chunk_len=chunk)
        inner = [ic for ic in (0, DEFAULT_CHUNK, 2 * DEFAULT_CHUNK)
                 if ic < chunk and chunk <= MAX_INNER * (ic or chunk)]
        for t, K, tl, tb, ic in itertools.product((64, 128, 256), (1, 2, 4, 8), (16, 32),
                                                  (4, 8, 16), inner):
            k = KernelConfig(t, _lpc_for(spec, K), tl, tb, ic=ic)
            if ok(k, s, "bwd") and (chunk, k) not in bwd:
                bwd.append((chunk, k))
    return {"fwd": fwd, "bwd": bwd}


# -- rendering -----------------------------------------------------------------------------
def state_run(spec: ScanSpec, k: KernelConfig, kind: str) -> int:
    """Consecutive states per run of a lane's K (template macro `sn`): the forward kinds take
    runs of the shared-load width (4, 2, 1), interleaved over the channel's lanes, so that
    the lanes' B / C loads of a step are one contiguous span (no bank conflicts); the backward
    keeps K consecutive states (its per-thread shared-memory rows are contiguous)."""
    K = states_per_thread(spec, k)
    if kind in ("bwd", "bsplit"):
        return K
    return 4 if K % 4 == 0 else 2 if K % 2 == 0 else 1


def half_tiles(spec: ScanSpec, k: KernelConfig, kind: str) -> bool:
    """The forward keeps 16-bit variable B / C tiles in shared memory as they came (exact),
    halving the step loop's B / C reads ((2K + 2) / K words per state-step -> (K + 2) / K).
    Measured 0-5% faster (NOTES "CUDA forward v5": the step chain's latency is the other
    limit), and half the tiles' shared memory. Real A, runs of 2 or 4 states (one 4- or 8-byte
    load per run)."""
    return (kind in ("fwd", "fsplit") and DTYPE_BYTES[spec.dtype] == 2 and not spec.complex_A
            and state_run(spec, k, kind) in (2, 4))


def geometry(spec: ScanSpec, k: KernelConfig) -> dict:
    K = states_per_thread(spec, k)
    return dict(K=K, NP=K * k.lpc, LPC=k.lpc, CPB=k.threads // k.lpc, THREADS=k.threads,
                TL=k.tl, TB=k.tb, IC=k.ic or spec.chunk_len)


@functools.lru_cache(maxsize=None)
def smem_layout(spec: ScanSpec, k: KernelConfig, kind: str) -> tuple[dict, int]:
    """Offsets (in floats, 16-byte aligned) of the shared-memory arrays and the total bytes."""
    g = geometry(spec, k)
    parts = ("r", "i") if spec.complex_A else ("r",)
    chan = g["CPB"] * (g["TL"] + 1)
    arrays = [("S_DT", chan), ("S_DTU", chan)] + ([("S_U", chan)] if kind != "fsplit" else [])
    if kind == "fwd":
        arrays += [("S_Z", chan)] if spec.has_z else []
        arrays += [("S_Y", g["CPB"] * _partials(spec, k) * (g["TL"] + 1))]
    elif kind in ("bwd", "bsplit"):
        arrays += [("S_DY", chan)] + ([("S_DZF", chan)] if spec.has_z else [])
        arrays += ([("S_SIG", chan)] if spec.delta_softplus else [])
        arrays += [("S_Y", chan), ("S_S1", chan), ("S_S2", chan)] if kind == "bwd" else []
    tiles = {"fwd": "BC", "bwd": "BC", "fsplit": "B", "bsplit": "C"}[kind]
    half = half_tiles(spec, k, kind)
    for X, var in (("B", spec.is_variable_B), ("C", spec.is_variable_C)):
        if var and X in tiles:
            arrays += [(f"S_{X}{p}", g["TL"] * g["NP"] // (2 if half else 1)) for p in parts]
    arrays += [("S_RST", g["TL"]), ("S_END", g["TL"])] if spec.varlen else []
    # the sequence of each step of the tile, whose initial state a sequence start takes
    arrays += [("S_SEQ", g["TL"])] if spec.varlen and spec.has_initial_state else []
    if kind == "bwd":
        arrays += [(f"S_HS{p}", g["IC"] // g["TB"] * g["THREADS"] * g["K"]) for p in parts]
        for X, var in (("B", spec.is_variable_B), ("C", spec.is_variable_C)):
            if var:
                arrays += [(f"S_D{X}P{p}", g["TB"] * g["CPB"] * g["NP"]) for p in parts]
    offsets, off = {}, 0
    for name, size in arrays:
        offsets[name] = off
        off += -(-size // 4) * 4
    return offsets, off * 4


def _partials(spec: ScanSpec, k: KernelConfig, kind: str = "fwd") -> int:
    """YP: partial sums per (channel, step) that a step stores for its epilogue instead of
    summing all LPC lanes by shuffles (forward only: the backward's shared memory bounds its
    occupancy); one where the forward sums lanes by groups of steps (_scatter)."""
    return (1 if _scatter(spec, k, kind)["y"] else min(k.lpc, 4)) if kind == "fwd" else 1


def _scatter(spec: ScanSpec, k: KernelConfig, kind: str) -> dict:
    """The lane sums by reduce-scatter (scatter_rounds, macro lane_scatter) a kernel makes.
    Backward: y per sub-tile (tb values), s1 and s2 per sub-tile (2 tb). Forward: y per group of
    `steps` steps, past 4 lanes per channel (at 16 lanes the FADDs waiting on the per-step
    shuffle rounds held 28% of the stall samples of m1_n128's forward, NOTES "CUDA forward
    v4"), but not past 8 fp32 states per thread: there the step's own work hides the shuffles,
    and the group's registers spill (d_state 512 at lpc 32)."""
    if kind == "bwd":
        return dict(y=scatter_rounds(k.lpc, k.tb), s=scatter_rounds(k.lpc, 2 * k.tb))
    if kind != "fwd":
        return dict(y=None)
    on = k.lpc > 4 and states_per_thread(spec, k) * kc(spec) <= 8
    g = math.gcd(8, k.tl)
    return dict(y=scatter_rounds(k.lpc, g) if on else None, steps=g)


def scatter_rounds(lpc: int, v: int) -> dict:
    """A reduce-scatter of v per-lane values over a channel's lpc lanes (macro lane_scatter),
    where the backward had summed each value by log2(lpc) shuffle rounds (5 per value at lpc 32:
    the top stall of d_state 128 was the shuffles' MIO queue). Rounds of xor offset lpc/2, ...,
    1: while the count is even a round halves it (a lane keeps one half, its partner the other:
    one shuffle per value kept), then plain butterfly rounds. Each lane ends with `left` full
    sums, of values at + 0 .. left-1 (at: the halves it kept); the lanes that differ only in
    `mask` (the plain rounds' bits) hold the same sums."""
    rounds, n, o, mask = [], v, lpc // 2, 0
    while o >= 1:
        halve = n % 2 == 0
        rounds.append((o, n, halve))
        n, mask = (n // 2, mask) if halve else (n, mask | o)
        o //= 2
    return dict(rounds=rounds, left=n, mask=mask)


def _elements(spec: ScanSpec, k: KernelConfig, vec: int, kind: str = "fwd") -> dict:
    """The tile elements per thread (IT: values, or 16-byte vectors of `vec` steps) and the
    per-channel values kept in registers across tiles: only where IT <= 8 (at lpc 1 IT reaches
    32, and the forward's prefetch already holds 2-3 registers per element). Every kind also
    loads its variable B / C tiles as vectors of `vec` steps of one state
    (VEC_BC, real B / C: complex ones interleave parts), ITBV per thread."""
    it = -(-(k.threads // k.lpc) * k.tl // (k.threads * max(vec, 1)))
    names = [n for n, on in (("dbias", spec.has_delta_bias),
                             ("D", spec.has_D and kind in ("fwd", "bwd"))) if on]
    # the backward's loads and epilogue loop over elements beyond 2 (element variants: IT
    # 8-16), whose unrolled loads and per-element registers cost it spills
    out = dict(IT=it, VEC=vec, chan_vals=names,
               chan_regs=it <= (2 if kind in ("bwd", "bsplit") else 8))
    out.update(VEC_BC=bool(vec) and not spec.complex_A,
               ITBV=-(-geometry(spec, k)["NP"] * (k.tl // max(vec, 1)) // k.threads))
    if kind == "bwd":
        out["red"] = _reduce_geometry(spec, k)
    return out


def _reduce_geometry(spec: ScanSpec, k: KernelConfig) -> dict:
    """How the backward sums variable dB / dC over a block's channels (macro bwd_reduce): items
    of Q states of one step of one tensor part, RS threads per item (their partial sums meet by
    shuffles), so that a block's threads have work when items are few (d_state 16: 32 items
    for 64 threads) and each item's loads are Q-wide."""
    g = geometry(spec, k)
    parts = kc(spec) * sum(1 for X in ("B", "C") if getattr(spec, f"is_variable_{X}"))
    q = 4 if g["NP"] % 4 == 0 else 2 if g["NP"] % 2 == 0 else 1
    items = max(1, parts * k.tb * g["NP"] // q)
    rs = 1
    while rs * 2 <= min(k.threads // items, g["CPB"], 32):
        rs *= 2
    per = k.threads // rs   # items in flight per pass
    return dict(Q=q, NQ=g["NP"] // q, ITEMS=items, RS=rs, ITEMS_PADDED=-(-items // per) * per)


def vector_steps(spec: ScanSpec, k: KernelConfig, kind: str) -> int:
    """Steps per 16-byte vector of the per-channel tiles (forward: u, delta, z, out and the
    real variable B / C tiles; backward: also dout, du, ddelta, dz), or 0 where the
    tile is not a whole number of vectors. Whether a call may take the vector kernel is
    `vector_ok` (alignment, per call)."""
    v = 16 // DTYPE_BYTES[spec.dtype]
    if kind == "bwd" and states_per_thread(spec, k) * kc(spec) > 8:
        # past 8 fp32 states per thread the per-element loads are a small part of the
        # backward, and the vectors' registers cost spills (d_state 300 complex on sm_80)
        return 0
    return v if kind in ("fwd", "fsplit", "bwd") and k.tl % v == 0 else 0


def variants(spec: ScanSpec, k: KernelConfig, kind: str) -> list:
    """The vector widths a (spec, config, kind) is rendered with: 0 (element loads) always."""
    return [0] + ([vector_steps(spec, k, kind)] if vector_steps(spec, k, kind) else [])


def vector_ok(call: Call, v: int, tensors: dict) -> bool:
    """16-byte loads and stores of v steps are legal for this call: L a multiple of v, and
    every per-channel tensor at unit step stride, its row and batch strides multiples of v,
    its pointer 16-byte aligned (checked per call: plans key on metadata, not pointers)."""
    if not v or call.seqlen % v:
        return False
    # constant or complex B / C take no vectors
    return all(vector_aligned(t, v) for t in tensors.values()
               if t is not None and t.dim() >= 3 and not t.is_complex())


def vector_aligned(t: torch.Tensor, v: int) -> bool:
    """16-byte vectors of v steps of t are legal: unit step stride, the other strides multiples
    of v, the pointer 16-byte aligned."""
    return t.stride(-1) == 1 and not any(s % v for s in t.stride()[:-1]) and t.data_ptr() % 16 == 0


def smem_bytes(spec: ScanSpec, k: KernelConfig, kind: str) -> int:
    return smem_layout(spec, k, kind)[1]


@functools.lru_cache(maxsize=None)
def kernel_params(spec: ScanSpec, kind: str) -> tuple:
    """(C declaration, name) of the rendered kernel's parameters, in order: the one list behind
    the rendered signature and the launcher."""
    io, f32 = "io_t", "float"

    def bc(X):
        return io if getattr(spec, f"is_variable_{X}") else f32

    ins = [(io, "u"), (io, "delta"), (f32, "A"), (bc("B"), "B"), (bc("C"), "C")]
    ins += [(t, n) for t, n, on in ((f32, "D", spec.has_D), (io, "z", spec.has_z),
                                    (f32, "dbias", spec.has_delta_bias)) if on]
    ins += [("int", "info")] if spec.varlen else []
    main = MAIN.get(kind, kind)
    if main == "fwd":
        ins += [(f32, "init")] if spec.has_initial_state else []
    else:  # packed sequences' initial states enter at their first steps, in every walk
        ins += [(f32, "init")] if spec.varlen and spec.has_initial_state else []
        ins += [(f32, "ckpt"), (io, "dout")] + ([(f32, "dlast")] if spec.return_last_state else [])
    # the splits' end states / adjoints and decays (buffers.split_buffers): the pre-pass
    # writes them, the main kernel reads them
    split = [(f32, "hsp"), (f32, "psp")]
    ins += split if kind == main else []
    p = [(f"const {t}* __restrict__", n) for t, n in ins]
    if kind != main:
        outs = split
    elif kind == "fwd":
        outs = [(io, "out"), (f32, "ckpt")] + ([(f32, "last")] if spec.return_last_state else [])
    else:
        outs = [(io, "du"), (io, "ddelta")] + ([(io, "dz")] if spec.has_z else [])
        outs += [(f32, "dB"), (f32, "dC"), (f32, "dA")]
        outs += [(f32, n) for n, on in (("dD", spec.has_D), ("ddbias", spec.has_delta_bias),
                                        ("dinit", spec.has_initial_state)) if on]
    p += [(f"{t}* __restrict__", n) for t, n in outs]
    ints = ["dim", "L", "n_chunks", "dseg", "bps", "s_ub", "s_ud", "s_db", "s_dd"]
    ints += ["s_zb", "s_zd"] if spec.has_z else []
    for X in ("B", "C"):
        if getattr(spec, f"is_variable_{X}"):
            ints += [f"dpg_{X}", f"s_{X}b", f"s_{X}g", f"s_{X}n"]
            ints += [f"ds_{X}b", f"ds_{X}g", f"ds_{X}n", f"ds_{X}t"] if kind == "bwd" else []
            ints += [f"ds_{X}slot"] if kind == "bwd" and spec.deterministic else []
    ints += ["save_ckpt"] if kind == "fwd" else [] if kind == "fsplit" else ["s_gb", "s_gd"]
    return tuple(p + [("const long long", n) for n in ints + ["split_chunks"]])


_IO = {"float32": "float", "bfloat16": "bf16", "float16": "fp16"}


def kernel_name(spec: ScanSpec, k: KernelConfig, kind: str, vec: int = 0) -> str:
    return f"ssmgen_cuda_{kind}_{spec.short_name()}__{k.tag()}" + (f"_v{vec}" if vec else "")


def context(spec: ScanSpec, k: KernelConfig, kind: str, vec: int = 0) -> dict:
    offsets, _ = smem_layout(spec, k, kind)
    prepass = kind in MAIN
    fetch_bc = [X for X in ("B", "C") if getattr(spec, f"is_variable_{X}")
                and not (prepass and X == "C")]
    return dict(
        kind=kind, prepass=prepass, fetch_z=spec.has_z and not prepass, fetch_bc=fetch_bc,
        spec_key=spec.key(), config_desc=repr(k), kernel_name=kernel_name(spec, k, kind, vec),
        params=[f"{t} {n}" for t, n in kernel_params(spec, kind)], N=spec.d_state,
        CHUNK=spec.chunk_len, io=_IO[spec.dtype], complex_A=spec.complex_A,
        variable={"B": spec.is_variable_B, "C": spec.is_variable_C}, has_D=spec.has_D,
        has_z=spec.has_z, has_delta_bias=spec.has_delta_bias,
        delta_softplus=spec.delta_softplus, return_last_state=spec.return_last_state,
        has_initial_state=spec.has_initial_state, reverse=spec.reverse, varlen=spec.varlen,
        deterministic=spec.deterministic,
        smem=offsets, YP=_partials(spec, k, kind), **geometry(spec, k),
        scatter=_scatter(spec, k, kind), SQ=state_run(spec, k, kind),
        HBC=half_tiles(spec, k, kind),
        **_elements(spec, k, vec, kind))


def render_source(spec: ScanSpec, k: KernelConfig, kind: str, vec: int = 0) -> str:
    if vec and vec != vector_steps(spec, k, kind):
        raise ValueError(f"vec={vec}: this {kind} kernel takes vectors of "
                         f"{vector_steps(spec, k, kind) or 'no'} steps")
    template = "fwd" if kind == "fsplit" else kind   # the forward without its outputs
    return render.render(f"cuda/{template}.cu.jinja", **context(spec, k, kind, vec))


@functools.lru_cache(maxsize=None)
def _source(spec: ScanSpec, k: KernelConfig, kind: str, vec: int = 0) -> str:
    k.check(spec, MAIN.get(kind, kind))
    return render_source(spec, k, kind, vec)


def kinds_of(k: KernelConfig, kind: str) -> list:
    """The kernels a fwd / bwd config may run: its pre-pass first unless it never splits."""
    return ([PREPASS[kind]] if k.splits != 1 else []) + [kind]


def split_plan(call: Call, k: KernelConfig, kind: str = "fwd") -> tuple[int, int]:
    """(splits, chunks per split) of this call for a fwd / bwd config: at most one split per
    chunk, and no empty split (ceil division can leave fewer splits than asked)."""
    n = buffers.n_chunks(call)
    asked = k.splits or auto_splits(call, k, kind)
    per = -(-n // max(1, min(asked, n)))
    return -(-n // per), per


def auto_splits(call: Call, k: KernelConfig, kind: str) -> int:
    """Splits for a config that asks for 0: none where batch * dim channels already give the
    main kernel AUTO_WARPS resident warps per SM on this GPU (the driver's occupancy for the
    compiled kernel), else the power of two that gives AUTO_WAVES full waves of blocks.
    Measured on the H100 (NOTES.md, "Splitting the sequence"): m1_long at 3.9 warps per SM,
    forward 1.2x and backward 1.9x faster split; m1_fp32's forward at 7.8, m1_130m's at 12
    and m1_1.4b's at 16 warps per SM, slower at any count (the pre-pass then only costs)."""
    fn, smem = _loaded(call, k, kind)
    sms = _sm_count(call.u.device.index or 0)
    full = cuda_runtime.blocks_per_sm(fn, k.threads, smem) * sms
    blocks = _segments(call, k)[2] * call.batch
    if min(blocks, full) * k.num_warps >= AUTO_WARPS * sms:
        return 1
    return 1 << max(0, math.ceil(math.log2(AUTO_WAVES * full / blocks)))


@functools.lru_cache(maxsize=None)
def _sm_count(dev: int) -> int:
    return torch.cuda.get_device_properties(dev).multi_processor_count


def _loaded(call: Call, k: KernelConfig, kind: str):
    """(loaded kernel, shared-memory bytes) of this call's kernel of a kind, in the variant the
    call's inputs allow (the output is ours, always aligned)."""
    v = vector_steps(call.spec, k, kind)
    # the backward's dout is aligned by `backward` where these are (it copies it otherwise)
    v = v if vector_ok(call, v, dict(u=call.u, delta=call.delta, z=call.z, B=call.B,
                                     C=call.C)) else 0
    smem = smem_bytes(call.spec, k, kind)
    fn = cuda_runtime.function(kernel_name(call.spec, k, kind, v), _source(call.spec, k, kind, v),
                               call.u.device.index or 0, smem)
    return fn, smem


def refine(spec: ScanSpec, call: Call, k: KernelConfig, kind: str) -> list:
    """The tuner's second round for the best config of a kind: the same with no split and
    with 2..64 splits (those this call's chunks allow), next to the first round's auto count,
    since what pays depends on how far batch * dim channels fill the GPU."""
    n = -(-call.seqlen // spec.chunk_len)
    return [dataclasses.replace(k, splits=s) for s in (1, 2, 4, 8, 16, 32, 64)
            if s <= n and s != k.splits]


def build(call: Call, cfg: ScanConfig, kinds) -> None:
    """Renders, compiles and loads (no launch) the call's kernels of these kinds (the forward
    in the variant its inputs allow; its output is ours, so always aligned)."""
    for main in kinds:
        k = getattr(cfg, main)
        for kind in kinds_of(k, main):
            _loaded(call, k, kind)


# -- launching -----------------------------------------------------------------------------
MAX_GRID_Y = 65535


def check_launch(call: Call) -> None:
    if call.batch > MAX_GRID_Y:
        raise ValueError(f"u: batch={call.batch} exceeds the CUDA backend's limit of {MAX_GRID_Y} "
                         f"batch rows per call (CUDA's grid y limit); split the batch")


def _segments(call: Call, k: KernelConfig) -> tuple[int, int, int]:
    """(dseg, blocks per segment, grid x): a block's channels share one B group and one C group,
    so blocks tile segments of gcd(channels per B group, channels per C group) channels."""
    dpg = [call.dim // getattr(call, f"groups_{X}") if getattr(call, X).dim() == 4 else call.dim
           for X in ("B", "C")]
    dseg = math.gcd(*dpg)
    cpb = k.threads // k.lpc
    bps = -(-dseg // cpb)
    return dseg, bps, call.dim // dseg * bps


def _int_args(call: Call, dseg: int, bps: int, extra: dict) -> dict:
    a = dict(dim=call.dim, L=call.seqlen, n_chunks=buffers.n_chunks(call), dseg=dseg, bps=bps,
             s_ub=call.u.stride(0), s_ud=call.u.stride(1), s_db=call.delta.stride(0),
             s_dd=call.delta.stride(1))
    if call.z is not None:
        a.update(s_zb=call.z.stride(0), s_zd=call.z.stride(1))
    for X in ("B", "C"):
        t = getattr(call, X)
        if t.dim() == 4:
            a.update({f"dpg_{X}": call.dim // getattr(call, f"groups_{X}"), f"s_{X}b": t.stride(0),
                      f"s_{X}g": t.stride(1), f"s_{X}n": t.stride(2)})
    a.update(extra)
    return a


def _as_real(t):
    return torch.view_as_real(t) if t is not None and t.is_complex() else t


def _run(call: Call, k: KernelConfig, kind: str, tensors: dict, extra: dict,
         plan: tuple[int, int]) -> None:
    """Launches one kernel (grid z: the splits of `plan`, split_plan's; a pre-pass skips the
    split it does not need); `extra`: integer arguments beyond sizes and input strides."""
    values, grid = _values(call, k, kind, tensors, extra, plan)
    fn, smem = _loaded(call, k, kind)
    args = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in values]
    cuda_runtime.launch(fn, grid, k.threads, smem, args, call.u.device.index or 0)


def _values(call: Call, k: KernelConfig, kind: str, tensors: dict, extra: dict,
            plan: tuple[int, int]) -> tuple[list, tuple]:
    """(the kernel's arguments in order: tensors and ints, the launch grid)."""
    dseg, bps, gx = _segments(call, k)
    nsplit, per = plan
    ints = _int_args(call, dseg, bps, dict(extra, split_chunks=per))
    values = [tensors[n] if n in tensors else int(ints[n])
              for _, n in kernel_params(call.spec, kind)]
    return values, (gx, call.batch, nsplit - 1 if kind in MAIN else nsplit)


def _inputs(call: Call) -> dict:
    return dict(u=call.u, delta=call.delta, A=_as_real(call.A), B=_as_real(call.B),
                C=_as_real(call.C), D=call.D, z=call.z, dbias=call.delta_bias,
                info=buffers.varlen_info(call), init=buffers.initial_state(call))


def forward(call: Call, cfg: ScanConfig, save_ckpt: bool):
    """Returns (out, last_state or None, checkpoints); layouts in backends/buffers.py."""
    return _forward(call, cfg, save_ckpt)[:3]


def _forward(call: Call, cfg: ScanConfig, save_ckpt: bool):
    """forward's results, then its kernels' tensors by parameter name and its split plan."""
    out, ckpt, last = buffers.forward_buffers(call, save_ckpt)
    t = _inputs(call)
    t.update(out=out, ckpt=ckpt, last=last)
    plan = split_plan(call, cfg.fwd, "fwd")
    _split_prepass(call, cfg.fwd, "fwd", t, {}, plan)
    _run(call, cfg.fwd, "fwd", t, {"save_ckpt": int(save_ckpt)}, plan)
    return out, buffers.finish_last(call, last), ckpt, t, plan


def forward_fast(call: Call, cfg: ScanConfig, save_ckpt: bool = False):
    """The forward run once on this call, and what a C++ launch of the same kernel needs
    (fastcall.Launch; ssmgen.ops, inference and training calls): (parts or None, argument
    values, {"out" / "ckpt" / "last": position of each output in them}, positions of fixed
    buffers (placeholders the kernel does not write at one split: the split buffers, and the
    checkpoint without save_ckpt), (out, raw last state or None, checkpoints)). No parts where
    the call takes two kernels (splits) or launches go through CuPy. Every parameter is a
    64-bit cell; the vector variant's 16-byte tensors must stay aligned."""
    out, _, ckpt, t, plan = _forward(call, cfg, save_ckpt)
    res = (out, t["last"], ckpt)
    if plan[0] > 1 or cuda_runtime._cu_launch() is None:
        return None, None, None, None, res
    names = ("out", "ckpt", "last") if save_ckpt else ("out", "last")
    fixed = ("hsp", "psp") if save_ckpt else ("ckpt", "hsp", "psp")
    return _fast(call, cfg.fwd, "fwd", t, {"save_ckpt": int(save_ckpt)}, plan, names, fixed,
                 ("u", "delta", "z", "B", "C")) + (res,)


def _fast(call, k, kind, t, extra, plan, outs, fixed, vector_names):
    """(parts, values, {output name: position}, fixed positions) of a C++ launch of the kernel
    `_run` would launch with these tensors (see forward_fast)."""
    values, grid = _values(call, k, kind, t, extra, plan)
    names = [n for _, n in kernel_params(call.spec, kind)]
    fn, smem = _loaded(call, k, kind)
    vec = vector_ok(call, vector_steps(call.spec, k, kind),
                    dict(u=call.u, delta=call.delta, z=call.z, B=call.B, C=call.C))
    tensors = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    parts = dict(cells=[0 if i in tensors else int(v) & (2**64 - 1) for i, v in enumerate(values)],
                 cell_of={i: i for i in range(len(values))},
                 aligned={i: 1 if vec and names[i] in vector_names else -1 for i in tensors},
                 fn=cuda_runtime._ptr(fn), grid=grid, block=k.threads,
                 smem=smem, guard=None, slots=tensors, names=names)
    where = {n: names.index(n) for n in outs if n in names}
    return parts, values, where, [names.index(n) for n in fixed]


def _split_prepass(call: Call, k: KernelConfig, kind: str, t: dict, extra: dict,
                   plan: tuple[int, int]) -> None:
    """Adds the split buffers to t (dummies for one split) and runs the kind's pre-pass."""
    hsp, psp = buffers.split_buffers(call, plan[0])
    t.update(hsp=hsp, psp=psp)
    if plan[0] > 1:
        _run(call, k, PREPASS[kind], t, extra, plan)


def backward_workspace(call: Call, cfg: ScanConfig):
    """(the backward's kernel config, partial slots per variable B/C group or None, scratch
    shape: the split buffers (2, splits, batch, dim, N[, 2]) of a split backward, else none:
    the states live in shared memory). Deterministic: one partial per block of a group, its
    segments times the blocks of each. A split backward's per-row partials have split_plan's
    splits rows per batch row."""
    n = split_plan(call, cfg.bwd, "bwd")[0]
    scratch = ((2, n, call.batch, call.dim, call.spec.d_state * kc(call.spec)) if n > 1
               else (0,))
    return cfg.bwd, _slots(call, cfg.bwd), scratch


def _slots(call: Call, k: KernelConfig):
    """Deterministic variable dB / dC partials per group (its segments times the blocks of
    each), or None."""
    if not call.spec.deterministic:
        return None
    dseg, bps, _ = _segments(call, k)
    return {X: call.dim // getattr(call, f"groups_{X}") // dseg * bps for X in ("B", "C")
            if getattr(call, X).dim() == 4}


def backward(call: Call, cfg: ScanConfig, ckpt: torch.Tensor, dout: torch.Tensor,
             dlast=None) -> dict:
    """Gradients of every input in canonical form (B/C variable in canonical real layout);
    dlast: the last state's gradient (None: zero)."""
    g, dlast, _, _, _, sm = _backward(call, cfg, ckpt, dout, dlast)
    return buffers.finish_grads(call, g, dlast, step_major=sm)


def backward_fast(call: Call, cfg: ScanConfig, ckpt: torch.Tensor, dout: torch.Tensor, dlast):
    """The backward run once on this call, and what a C++ launch of its kernel needs
    (ssmgen.ops, training calls): (parts or None, argument values, {gradient name: position
    of its buffer}, fixed placeholder positions, the gradient buffers as the kernel left them,
    the steps that finish them (buffers.grad_steps)). No parts for a split backward (two
    kernels) or CuPy launches."""
    g, _, t, extra, plan, sm = _backward(call, cfg, ckpt, dout, dlast)
    steps = buffers.grad_steps(call, g, sm)
    if plan[0] > 1 or cuda_runtime._cu_launch() is None:
        return None, None, None, None, g, steps
    parts, values, where, fixed = _fast(call, cfg.bwd, "bwd", t, extra, plan,
                                        [n for n, v in g.items() if v is not None],
                                        ("hsp", "psp"), ("u", "delta", "z", "B", "C", "dout"))
    return parts, values, where, fixed, g, steps


def _backward(call: Call, cfg: ScanConfig, ckpt: torch.Tensor, dout: torch.Tensor, dlast):
    """Runs the backward kernel(s): (gradient buffers, dlast as the kernel read it, the kernel's
    tensors by parameter name, its integer extras, the split plan, step_major)."""
    v = vector_steps(call.spec, cfg.bwd, "bwd")
    if dout.stride(-1) != 1 or (v and call.seqlen % v == 0 and not vector_aligned(dout, v)):
        # unit step stride for the kernel, and where the vector backward may run, aligned like
        # the kernel's own buffers: the vector variant is chosen without looking at dout
        dout = dout.clone(memory_format=torch.contiguous_format)
    # the split plan once per call (auto splits ask the loaded kernel's occupancy)
    slots, plan = _slots(call, cfg.bwd), split_plan(call, cfg.bwd, "bwd")
    sm = step_major(call, cfg)
    g = buffers.grad_buffers(call, slots, rows=plan[0], step_major=sm)
    extra = {"s_gb": dout.stride(0), "s_gd": dout.stride(1)}
    for X in ("B", "C"):
        dX = g["d" + X]
        if getattr(call, X).dim() == 4:  # summed over channels by vector reductions into
            o = 1 if slots else 0        # step-major fp32 zeros, or per block into its own
            rows, states = (2, 3) if sm else (3, 2)   # canonical partial (deterministic)
            extra.update({f"ds_{X}b": dX.stride(o), f"ds_{X}g": dX.stride(o + 1),
                          f"ds_{X}n": dX.stride(o + states), f"ds_{X}t": dX.stride(o + rows)})
            if slots:
                extra[f"ds_{X}slot"] = dX.stride(0)
    t = _inputs(call)
    dlast = buffers.dlast(call, dlast)
    t.update(ckpt=ckpt, dout=dout, dlast=dlast, **{n: v for n, v in g.items() if v is not None})
    _split_prepass(call, cfg.bwd, "bwd", t, extra, plan)
    _run(call, cfg.bwd, "bwd", t, extra, plan)
    return g, dlast, t, extra, plan, sm


def step_major(call: Call, cfg: ScanConfig) -> int:
    """States per row of the step-major variable dB / dC sums (buffers.grad_buffers), the
    kernel's NP, or 0 for the canonical layout (deterministic partials, no atomics)."""
    return 0 if call.spec.deterministic else geometry(call.spec, cfg.bwd)["NP"]


# -- the decode step ---------------------------------------------------------------------------
STEP_TEMPLATES = ("cuda/step.cu.jinja", "cuda/common.cuh.jinja")
_STEP_TYPES = {"f32": "float", "i64": "long long", "io": "io_t"}


def default_step_config(spec: ScanSpec) -> KernelConfig:
    """About 4 states per thread (lanes of a channel read its row together, 4 loads in
    flight per thread) and 256 threads: measured on the H100, one state per thread and 8
    channels per block left the step at 43 us (4x the byte floor; many tiny blocks, one
    dependent load-store chain each) at b64 d4096 n16."""
    NP = 1 << max(0, (spec.d_state - 1).bit_length())
    lpc = max(1, min(32, NP // 4))
    return KernelConfig(threads=256, lpc=lpc)


def step_candidates(spec: ScanSpec, headdim: int) -> list:
    grid = [KernelConfig(threads=t, lpc=p) for t in (64, 128, 256, 512)
            for p in (4, 8, 16, 32) if p <= max(4, 1 << (spec.d_state - 1).bit_length())
            and t // p <= max(1, 1 << (headdim - 1).bit_length())]
    default = default_step_config(spec)
    return [default] + [k for k in grid if k != default]


def check_step(spec: ScanSpec, k: KernelConfig) -> None:
    k.check_fields(("threads", "lpc"))
    if k.lpc > k.threads:
        raise ValueError(f"config.lpc={k.lpc} exceeds threads={k.threads}")


def step_kernel_name(spec: ScanSpec, k: KernelConfig) -> str:
    return f"ssmgen_cuda_step_{spec.short_name(chunk=False)}__t{k.threads}_p{k.lpc}"


@functools.lru_cache(maxsize=None)
def render_step(spec: ScanSpec, k: KernelConfig) -> str:
    params = [f"{'const ' if n not in ('state', 'out') else ''}{_STEP_TYPES[kind]}* __restrict__ {n}"
              if kind != "int" else f"const long long {n}" for n, kind in buffers.step_params(spec)]
    return render.render("cuda/step.cu.jinja", spec_key=spec.key(), config_desc=repr(k),
                         kernel_name=step_kernel_name(spec, k), params=params, N=spec.d_state,
                         K=states_per_thread(spec, k), LPC=k.lpc, CPB=k.threads // k.lpc,
                         THREADS=k.threads, io=_IO[spec.dtype], complex_A=spec.complex_A,
                         has_D=spec.has_D, has_z=spec.has_z,
                         has_delta_bias=spec.has_delta_bias, delta_softplus=spec.delta_softplus,
                         has_state_indices=spec.has_state_indices, reverse=False)


def step(call, k: KernelConfig) -> torch.Tensor:
    """One decode step in place on call.state; returns out (batch, heads, headdim)."""
    if call.batch > MAX_GRID_Y or call.heads > MAX_GRID_Y:
        raise ValueError(f"x: batch={call.batch} and heads={call.heads} must be <= {MAX_GRID_Y}")
    out = buffers.step_out(call)
    a = buffers.step_args(call, out)
    launch_step(call, k, [a[n] for n, _ in buffers.step_params(call.spec)])
    return out


def step_launcher(call, k: KernelConfig, slots):
    """A launcher of this call shape's step kernel: values -> None, where only the tensors at
    `slots` differ from call to call (ssmgen.step's plans); one prepared launch per device."""
    return _StepLauncher(call, k, tuple(slots))


class _StepLauncher:
    def __init__(self, call, k: KernelConfig, slots: tuple):
        self.call, self.k, self.slots = call, k, slots
        self.prepared: dict = {}

    def _get(self, values):
        dev = values[self.slots[0]].device.index or 0
        p = self.prepared.get(dev)
        if p is None:
            p = self.prepared[dev] = _step_prepared(self.call, self.k, values, dev)
        return p

    def __call__(self, values) -> None:
        self._get(values)([(i, values[i].data_ptr()) for i in self.slots])

    def fast_parts(self, values: list):
        """What a C++ launch (fastcall.Launch) needs: every parameter is an int64 cell; the
        kernels make no alignment assumption (slots -1). None where launches go through CuPy
        (SSMGEN_CUDA_LAUNCH=cupy, or no driver entry point)."""
        if cuda_runtime._cu_launch() is None:
            return None
        p = self._get(values)
        return dict(cells=[int(v) & (2**64 - 1) for v in p._vals],
                    cell_of={i: i for i in range(len(values))},
                    aligned={i: -1 for i in self.slots}, fn=cuda_runtime._ptr(p.fn),
                    grid=p.grid, block=p.threads, smem=p.smem, guard=None)


def launch_step(call, k: KernelConfig, values: list) -> None:
    """Launches the step kernel on `values` (buffers.step_params order: tensors and ints) for a
    call's shape (spec, batch, heads, headdim: its tensors are not read)."""
    _step_prepared(call, k, values, values[0].device.index or 0)([])  # values[0]: the state


def _step_prepared(call, k: KernelConfig, values: list, dev: int):
    fn = cuda_runtime.function(step_kernel_name(call.spec, k), render_step(call.spec, k), dev, 0)
    args = [v.data_ptr() if isinstance(v, torch.Tensor) else int(v) for v in values]
    grid = (-(-call.headdim // (k.threads // k.lpc)), call.batch, call.heads)
    return cuda_runtime.Prepared(fn, grid, k.threads, 0, args, dev)
