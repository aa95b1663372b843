"""Triton backend: renders templates/triton/{fwd,bwd}.py.jinja for a (spec, config) pair, imports
the result from the cache directory, and launches it on tensors prepared by ssmgen.inputs.

Everything the templates branch on comes from the ScanSpec (via `context`); the config carries
only tile shapes and warps. The kernel's parameter list is built here once (`kernel_params`) and
used for the rendered signature, the launch and ahead-of-time compilation, so they cannot drift.
"""
from __future__ import annotations

import functools
import itertools
import json
import dataclasses
from dataclasses import dataclass

import torch
import triton

from ssmgen import render
from ssmgen.inputs import Call
from ssmgen.spec import ScanSpec

from . import buffers, triton_launch
from .config import ScanConfigBase

TEMPLATES = ("triton/fwd.py.jinja", "triton/bwd.py.jinja", "triton/macros.jinja",
             "triton/common.py.jinja")
SPACE = "triton/space.json"


MAX_TILE_PER_THREAD = 64


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape of one kernel: BLOCK_D channels x all states x BLOCK_L timesteps."""

    block_d: int = 4
    block_l: int = 32
    num_warps: int = 4
    num_stages: int = 1

    def tag(self) -> str:
        return f"d{self.block_d}_l{self.block_l}_w{self.num_warps}_s{self.num_stages}"

    def label(self) -> str:  # what a tuning log prints (the CUDA config adds its launch split)
        return self.tag()

    def check_fields(self, names=("block_d", "block_l", "num_warps")) -> None:
        for name in names:
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"config.{name} must be a positive power of two, got {v!r}")

    def check(self, spec: ScanSpec, kind: str = "bwd") -> None:
        self.check_fields()
        if self.block_l > spec.chunk_len or self.block_l < 2:
            raise ValueError(f"config.block_l must be in 2..chunk_len={spec.chunk_len}, "
                             f"got {self.block_l}")
        values = per_thread(spec, self)
        if values > MAX_TILE_PER_THREAD:
            # such tiles spill everything and take minutes to compile: refuse them up front
            raise ValueError(
                f"config: tile block_d*d_state*block_l = {self.block_d}*{padded_state(spec)}*"
                f"{self.block_l} is {values} fp32 values per thread at num_warps="
                f"{self.num_warps}; at most {MAX_TILE_PER_THREAD} (smaller blocks or more warps)")


@dataclass(frozen=True)
class ScanConfig(ScanConfigBase):
    KERNEL = KernelConfig


def padded_state(spec: ScanSpec) -> int:
    return max(2, triton.next_power_of_2(spec.d_state))


def default_config(spec: ScanSpec) -> ScanConfig:
    """Heuristic used when no tuned record exists, from a sweep on the H100
    (benchmarks/results/*/sweep_v0): the scan axis should stay inside one warp (2 warps, L-block
    of 64 at d_state <= 32: 0.78 ms forward vs 1.48 at 4 warps and 2.55 at 8 on m1_130m), and
    the tile should hold about 2048 fp32 elements per 64 threads (1024 for complex A)."""
    NP = padded_state(spec)
    bl = min(spec.chunk_len, 64 if NP <= 32 else 32)
    kx = 2 if spec.complex_A else 1
    while NP * bl * kx > MAX_TILE_PER_THREAD * 256 and bl > 2:  # d_state > 256: 8 warps, <= 64
        bl //= 2
    warps = 2 if NP * bl <= 2048 else min(8, NP * bl // 1024)
    budget = (1024 if spec.complex_A else 2048) * (warps // 2)
    k = KernelConfig(block_d=max(1, min(16, budget // (NP * bl))), block_l=bl, num_warps=warps)
    return ScanConfig(k, k)


def default_chunk_len(spec: ScanSpec) -> int:
    return spec.chunk_len


def per_thread(spec: ScanSpec, k: KernelConfig) -> int:
    """fp32 values of one [BLOCK_D, NP, BLOCK_L] tile per thread: the register-pressure proxy."""
    return (k.block_d * padded_state(spec) * k.block_l * (2 if spec.complex_A else 1)
            // (32 * k.num_warps))


def candidates(spec: ScanSpec, dim: int, seqlen: int) -> dict:
    """The search space of space.json pruned for this spec and size: {"fwd": [KernelConfig],
    "bwd": [(chunk_len, KernelConfig)]}. Rules: the tile holds per_thread_min..max fp32 values
    per thread (below wastes warps on masked lanes, above spills and compiles for minutes);
    block_l <= chunk_len; no channel block wider than the padded dim; a chunk no longer than the
    padded sequence."""
    sp = json.loads(render.environment().loader.get_source(render.environment(), SPACE)[0])
    lo, hi = sp["per_thread_min"], sp["per_thread_max"]
    max_bd = triton.next_power_of_2(dim)
    max_chunk = max(min(sp["chunk_len"]), triton.next_power_of_2(seqlen))

    def grid(kind, chunk):
        g = sp[kind]
        out = []
        for bd, bl, w, st in itertools.product(g["block_d"], g["block_l"], g["num_warps"],
                                               g["num_stages"]):
            k = KernelConfig(bd, bl, w, st)
            if bd <= max_bd and bl <= chunk and lo <= per_thread(spec, k) <= hi:
                out.append(k)
        return out

    fwd = grid("fwd", spec.chunk_len)
    bwd = [(c, k) for c in sp["chunk_len"] if c <= max_chunk
           for k in grid("bwd", c)]
    return {"fwd": fwd, "bwd": bwd}


# -- rendering -----------------------------------------------------------------------------
_IO_PTRS = {"u_ptr", "delta_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr",
            "dz_ptr"}
_TRITON_DTYPE = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def kernel_params(spec: ScanSpec, kind: str) -> list:
    """(name, Triton signature type) of the rendered kernel's parameters, in order. The one list
    behind the rendered signature, the launcher and ahead-of-time compilation."""
    a = ["u_ptr", "delta_ptr", "A_ptr", "B_ptr", "C_ptr"]
    a += [n for n, on in (("D_ptr", spec.has_D), ("z_ptr", spec.has_z),
                          ("dbias_ptr", spec.has_delta_bias)) if on]
    a += ["info_ptr"] if spec.varlen else []
    if kind == "fwd":
        a += ["init_ptr"] if spec.has_initial_state else []
        a += ["out_ptr", "ckpt_ptr"] + (["last_ptr"] if spec.return_last_state else [])
    else:  # packed sequences' initial states enter at their first steps, in every walk
        a += ["init_ptr"] if spec.varlen and spec.has_initial_state else []
        a += ["ckpt_ptr", "dout_ptr"] + (["dlast_ptr"] if spec.return_last_state else [])
        a += ["scratch_ptr", "du_ptr", "ddelta_ptr"]
        a += ["dz_ptr"] if spec.has_z else []
        a += ["dB_ptr", "dC_ptr", "dA_ptr"]
        a += [n for n, on in (("dD_ptr", spec.has_D), ("ddbias_ptr", spec.has_delta_bias),
                              ("dinit_ptr", spec.has_initial_state)) if on]
    a += ["dim", "L", "n_chunks"]
    a += ["s_ub", "s_ud", "s_db", "s_dd"] + (["s_zb", "s_zd"] if spec.has_z else [])
    for X, var in (("B", spec.is_variable_B), ("C", spec.is_variable_C)):
        if var:
            a += [f"dpg_{X}", f"s_{X}b", f"s_{X}g", f"s_{X}n"]
            a += [f"ng_{X}"] if kind == "bwd" else []
            a += [f"ds_{X}slot"] if kind == "bwd" and spec.deterministic else []
    if kind == "bwd":
        a += ["s_gb", "s_gd"]
    constexprs = [f"{X}_UNIFORM" for X, var in (("B", spec.is_variable_B),
                                                 ("C", spec.is_variable_C)) if var]
    constexprs += ["SAVE_CKPT"] if kind == "fwd" else []
    io = "*" + _TRITON_DTYPE[spec.dtype]
    variable = {"B_ptr": spec.is_variable_B, "C_ptr": spec.is_variable_C}

    def typ(n):
        if not n.endswith("_ptr"):
            return "i32"
        if n == "info_ptr":
            return "*i32"
        return io if n in _IO_PTRS or variable.get(n) else "*fp32"

    return [(n, typ(n)) for n in a] + [(n, "constexpr") for n in constexprs]


def kernel_args(spec: ScanSpec, kind: str) -> list:
    """The rendered signature's parameters."""
    return [n + (": tl.constexpr" if t == "constexpr" else "") for n, t in kernel_params(spec, kind)]


def kernel_name(spec: ScanSpec, cfg: KernelConfig, kind: str) -> str:
    return f"ssmgen_{kind}_{spec.short_name()}__{cfg.tag()}"


def context(spec: ScanSpec, cfg: KernelConfig, kind: str) -> dict:
    return dict(
        spec_key=spec.key(), config_desc=repr(cfg), kernel_name=kernel_name(spec, cfg, kind),
        args=kernel_args(spec, kind), N=spec.d_state, NP=padded_state(spec),
        K=2 if spec.complex_A else 1, block_d=cfg.block_d, block_l=cfg.block_l,
        blocks_per_chunk=spec.chunk_len // cfg.block_l, complex_A=spec.complex_A,
        B_variable=spec.is_variable_B, C_variable=spec.is_variable_C, has_D=spec.has_D,
        has_z=spec.has_z, has_delta_bias=spec.has_delta_bias, delta_softplus=spec.delta_softplus,
        return_last_state=spec.return_last_state, has_initial_state=spec.has_initial_state,
        reverse=spec.reverse, varlen=spec.varlen, deterministic=spec.deterministic,
    )


def render_source(spec: ScanSpec, cfg: KernelConfig, kind: str) -> str:
    return render.render(f"triton/{kind}.py.jinja", **context(spec, cfg, kind))


@functools.lru_cache(maxsize=None)
def kernel(spec: ScanSpec, cfg: KernelConfig, kind: str):
    """The @triton.jit function for (spec, config, kind), rendered and imported once."""
    cfg.check(spec)
    name = kernel_name(spec, cfg, kind)
    mod = render.load_module("triton", name, render_source(spec, cfg, kind))
    return getattr(mod, name)


def build(call: Call, cfg: ScanConfig, kinds) -> None:
    """Renders and compiles (no launch) the call's kernels of these kinds ("fwd", "bwd")."""
    for kind in kinds:
        kernel(call.spec, getattr(cfg, kind), kind)


# -- launching -----------------------------------------------------------------------------
def _bc_launch_args(call: Call, X: str, kind: str, block_d: int) -> dict:
    t = getattr(call, X)
    if t.dim() == 2:
        return {}
    groups = getattr(call, f"groups_{X}")
    dpg = call.dim // groups
    a = {f"dpg_{X}": dpg, f"s_{X}b": t.stride(0), f"s_{X}g": t.stride(1), f"s_{X}n": t.stride(2),
         f"{X}_UNIFORM": dpg % block_d == 0}
    if kind == "bwd":
        a[f"ng_{X}"] = groups
    return a


def _as_real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def _common_args(call: Call, kind: str, cfg: KernelConfig) -> dict:
    a = dict(u_ptr=call.u, delta_ptr=call.delta, A_ptr=_as_real(call.A), B_ptr=_as_real(call.B),
             C_ptr=_as_real(call.C), D_ptr=call.D, z_ptr=call.z, dbias_ptr=call.delta_bias,
             init_ptr=buffers.initial_state(call), dim=call.dim, L=call.seqlen,
             s_ub=call.u.stride(0), s_ud=call.u.stride(1), s_db=call.delta.stride(0),
             s_dd=call.delta.stride(1))
    if call.z is not None:
        a.update(s_zb=call.z.stride(0), s_zd=call.z.stride(1))
    if call.spec.varlen:
        a["info_ptr"] = buffers.varlen_info(call)
    a.update(_bc_launch_args(call, "B", kind, cfg.block_d))
    a.update(_bc_launch_args(call, "C", kind, cfg.block_d))
    return a


def _launch(spec, cfg, kind, args: dict, grid):
    fn = kernel(spec, cfg, kind)
    try:
        values = [args[n] for n, _ in kernel_params(spec, kind)]
    except KeyError as e:
        raise AssertionError(f"launcher lacks kernel argument {e}") from None
    triton_launch.launch(fn, grid, values, cfg.num_warps, cfg.num_stages)


_new = buffers.new


MAX_GRID_Y = 65535  # CUDA's limit on the second grid dimension, which holds the batch


def check_launch(call: Call) -> None:
    """Limits of this backend's launch that input validation does not know about."""
    if call.batch > MAX_GRID_Y:
        raise ValueError(f"u: batch={call.batch} exceeds the Triton backend's limit of "
                         f"{MAX_GRID_Y} batch rows per call (CUDA's grid y limit); split the batch")
    # The kernels form batch and channel offsets in int64, but the offset of an element inside
    # one batch row of a variable B/C (group, state, time) in int32: refuse what would wrap.
    for X in ("B", "C"):
        t = getattr(call, X)
        if t.dim() == 4:
            extent = sum((n - 1) * st for n, st in zip(t.shape[1:], t.stride()[1:])) + 2
            if extent >= 2**31:
                raise ValueError(f"{X}: one batch row spans {extent} elements; the Triton kernels "
                                 f"index within a row in 32 bits (at most 2**31 - 1)")
    # A and constant B/C are indexed (channel * N + state) * K in int32
    K = 2 if call.spec.complex_A else 1
    if call.dim * call.spec.d_state * K >= 2**31:
        raise ValueError(f"A: dim x d_state = {call.dim} x {call.spec.d_state} elements"
                         f"{' x 2' if K == 2 else ''} exceed the Triton kernels' 32-bit index "
                         f"(at most 2**31 - 1); use the CUDA backend or split dim")


def forward(call: Call, cfg: ScanConfig, save_ckpt: bool):
    """Returns (out, last_state or None, checkpoints); layouts in backends/buffers.py."""
    out, ckpt, last, args, grid = _forward_args(call, cfg, save_ckpt)
    _launch(call.spec, cfg.fwd, "fwd", args, grid)
    return out, buffers.finish_last(call, last), ckpt


def _forward_args(call: Call, cfg: ScanConfig, save_ckpt: bool):
    """(out, checkpoints, raw last state, the kernel's arguments by name, the grid)."""
    out, ckpt, last = buffers.forward_buffers(call, save_ckpt)
    args = _common_args(call, "fwd", cfg.fwd)
    args.update(out_ptr=out, ckpt_ptr=ckpt, last_ptr=last, n_chunks=buffers.n_chunks(call),
                SAVE_CKPT=save_ckpt)
    return out, ckpt, last, args, (triton.cdiv(call.dim, cfg.fwd.block_d), call.batch)


def forward_fast(call: Call, cfg: ScanConfig, save_ckpt: bool = False):
    """The forward as a triton_launch.Bound, run once on this call, and what a C++ launch of
    the same kernel needs (fastcall.Launch; ssmgen.ops, inference and training calls): (parts
    or None, argument values, {"out" / "ckpt" / "last": position of each output in them},
    positions of fixed buffers (the 1-element checkpoint placeholder, never written without
    SAVE_CKPT), (out, raw last state or None, checkpoints)). Its integers are fixed by the
    call's metadata."""
    out, ckpt, last, args, grid = _forward_args(call, cfg, save_ckpt)
    parts, values, where = _fast(call.spec, cfg.fwd, "fwd", args, grid, ("out", "ckpt", "last"))
    fixed = [] if save_ckpt else [where.pop("ckpt")]
    return parts, values, where, fixed, (out, last, ckpt)


def _fast(spec, k, kind, args, grid, outs):
    """Runs the kernel through a triton_launch.Bound: (its fast_parts with the tensor slots, or
    None; the argument values; {output name: position} of the outputs named in `outs`)."""
    names = [n for n, _ in kernel_params(spec, kind)]
    values = [args[n] for n in names]
    slots = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    bound = triton_launch.Bound(kernel(spec, k, kind), grid, slots, k.num_warps, k.num_stages)
    bound(values)
    parts = bound.fast_parts(values)
    if parts is not None:
        parts.update(slots=list(slots), names=[n.removesuffix("_ptr") for n in names])
    where = {n: names.index(f"{n}_ptr") for n in outs if f"{n}_ptr" in names}
    return parts, values, where


def backward_workspace(call: Call, cfg: ScanConfig):
    """(the backward's kernel config, partial slots per variable B/C group or None, the fp32
    scratch shape: block-entry states of a chunk, (batch, channels, blocks per chunk, NP[, 2]))."""
    k, slots = cfg.bwd, None
    if call.spec.deterministic:  # a block's channels in one group, so it owns one partial slot
        dpg = {X: call.dim // getattr(call, f"groups_{X}") for X in ("B", "C")
               if getattr(call, X).dim() == 4}
        k = dataclasses.replace(k, block_d=min(k.block_d, *(d & -d for d in dpg.values())))
        slots = {X: d // k.block_d for X, d in dpg.items()}
    bpc = call.spec.chunk_len // k.block_l
    K = (2,) if call.spec.complex_A else ()
    scratch = ((call.batch, triton.cdiv(call.dim, k.block_d) * k.block_d, bpc,
                padded_state(call.spec)) + K if bpc > 1 else (1,))
    return k, slots, scratch


def backward(call: Call, cfg: ScanConfig, ckpt: torch.Tensor, dout: torch.Tensor,
             dlast=None) -> dict:
    """Gradients of every input in canonical form (B/C variable in canonical real layout);
    dlast: the last state's gradient (None: zero)."""
    k, args, grid, g, dlast = _backward_args(call, cfg, ckpt, dout, dlast)
    _launch(call.spec, k, "bwd", args, grid)
    return buffers.finish_grads(call, g, dlast)


def backward_fast(call: Call, cfg: ScanConfig, ckpt: torch.Tensor, dout: torch.Tensor, dlast):
    """The backward as a triton_launch.Bound, run once on this call, and what a C++ launch of
    it needs (ssmgen.ops, training calls): (parts or None, argument values, {gradient name
    (and "scratch"): position of its buffer}, fixed placeholder positions, the gradient
    buffers as the kernel left them, the steps that finish them (buffers.grad_steps))."""
    k, args, grid, g, _ = _backward_args(call, cfg, ckpt, dout, dlast)
    names = tuple(n for n, v in g.items() if v is not None)
    parts, values, where = _fast(call.spec, k, "bwd", args, grid, names + ("scratch",))
    # the scratch: a per-call buffer, or a 1-element placeholder (one block per chunk)
    fixed = [] if args["scratch_ptr"].numel() > 1 else [where.pop("scratch")]
    return parts, values, where, fixed, g, buffers.grad_steps(call, g)


def _backward_args(call: Call, cfg: ScanConfig, ckpt, dout, dlast):
    """(kernel config, the backward kernel's arguments by name, grid, gradient buffers, dlast
    as the kernel reads it)."""
    spec = call.spec
    k, slots, scratch_shape = backward_workspace(call, cfg)
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    grid = (triton.cdiv(call.dim, k.block_d), call.batch)
    scratch = _new(scratch_shape, torch.float32, call.u.device)
    g = buffers.grad_buffers(call, slots)
    dlast = buffers.dlast(call, dlast)
    args = _common_args(call, "bwd", k)
    args.update(ckpt_ptr=ckpt, dout_ptr=dout, scratch_ptr=scratch, dlast_ptr=dlast,
                n_chunks=buffers.n_chunks(call), s_gb=dout.stride(0), s_gd=dout.stride(1),
                **{f"{n}_ptr": v for n, v in g.items()})
    if slots:
        args.update({f"ds_{X}slot": g["d" + X].stride(0) for X in ("B", "C")
                     if g["d" + X].dim() == 5})
    return k, args, grid, g, dlast


# -- the decode step ---------------------------------------------------------------------------
STEP_TEMPLATES = ("triton/step.py.jinja",)
_STEP_TYPES = {"f32": "*fp32", "i64": "*i64", "int": "i32"}


def default_step_config(spec: ScanSpec) -> KernelConfig:
    """mamba-ssm's hand-picked table (its step sits at the byte floor): about 512 states per
    program at 4 warps, 8 warps past d_state 128."""
    NP = padded_state(spec)
    return KernelConfig(block_d=max(1, min(32, 512 // NP)), block_l=2,
                        num_warps=4 if NP <= 128 else 8)


def step_candidates(spec: ScanSpec, headdim: int) -> list:
    NP = padded_state(spec)
    grid = [KernelConfig(block_d=bd, block_l=2, num_warps=w)
            for bd in (1, 2, 4, 8, 16, 32, 64) for w in (1, 2, 4, 8)
            if bd <= triton.next_power_of_2(headdim) and 32 * w <= max(32, bd * NP)
            and bd * NP * (2 if spec.complex_A else 1) <= 64 * 32 * w]
    default = default_step_config(spec)
    return [default] + [k for k in grid if k != default]


def check_step(spec: ScanSpec, k: KernelConfig) -> None:
    k.check_fields(("block_d", "num_warps"))
    if k.block_d * padded_state(spec) * (2 if spec.complex_A else 1) > 64 * 32 * k.num_warps:
        raise ValueError(f"config: block_d={k.block_d} x d_state={padded_state(spec)} is more "
                         f"than 64 fp32 values per thread at num_warps={k.num_warps}")


def step_kernel_name(spec: ScanSpec, k: KernelConfig) -> str:
    return f"ssmgen_step_{spec.short_name(chunk=False)}__d{k.block_d}_w{k.num_warps}"


def render_step(spec: ScanSpec, k: KernelConfig) -> str:
    io = "*" + _TRITON_DTYPE[spec.dtype]
    params = buffers.step_params(spec)
    args = [n + "_ptr" if kind != "int" else n for n, kind in params]
    return render.render("triton/step.py.jinja", spec_key=spec.key(), config_desc=repr(k),
                         kernel_name=step_kernel_name(spec, k), args=args, N=spec.d_state,
                         NP=padded_state(spec), K=2 if spec.complex_A else 1,
                         block_d=k.block_d, complex_A=spec.complex_A, has_D=spec.has_D,
                         has_z=spec.has_z, has_delta_bias=spec.has_delta_bias,
                         delta_softplus=spec.delta_softplus,
                         has_state_indices=spec.has_state_indices), [
        (a, io if kind == "io" else _STEP_TYPES[kind]) for a, (_, kind) in zip(args, params)]


@functools.lru_cache(maxsize=None)
def step_kernel(spec: ScanSpec, k: KernelConfig):
    name = step_kernel_name(spec, k)
    return getattr(render.load_module("triton", name, render_step(spec, k)[0]), name)


def step(call, k: KernelConfig) -> torch.Tensor:
    """One decode step in place on call.state; returns out (batch, heads, headdim)."""
    if call.batch > MAX_GRID_Y:
        raise ValueError(f"x: batch={call.batch} exceeds {MAX_GRID_Y} rows per step call")
    if call.heads > MAX_GRID_Y:  # the heads are the grid's z dimension
        raise ValueError(f"x: heads={call.heads} exceeds {MAX_GRID_Y} heads per step call")
    K = 2 if call.spec.complex_A else 1
    if call.heads * call.headdim * call.spec.d_state * K >= 2**31:  # int32 offsets in a row / A
        raise ValueError(f"state: one state row of heads x headdim x d_state = {call.heads} x "
                         f"{call.headdim} x {call.spec.d_state} exceeds the Triton step's 32-bit "
                         f"index (at most 2**31 - 1); use the CUDA backend")
    out = buffers.step_out(call)
    a = buffers.step_args(call, out)
    launch_step(call, k, [a[n] for n, _ in buffers.step_params(call.spec)])
    return out


def step_launcher(call, k: KernelConfig, slots):
    """A launcher of this call shape's step kernel: values -> None, where only the tensors at
    `slots` (and out) differ from call to call (ssmgen.step's plans)."""
    return triton_launch.Bound(step_kernel(call.spec, k), _step_grid(call, k), slots, k.num_warps)


def launch_step(call, k: KernelConfig, values: list) -> None:
    """Launches the step kernel on `values` (buffers.step_params order) for a call's shape
    (spec, batch, heads, headdim: its tensors are not read)."""
    triton_launch.launch(step_kernel(call.spec, k), _step_grid(call, k), values, k.num_warps)


def _step_grid(call, k: KernelConfig) -> tuple:
    return (triton.cdiv(call.headdim, k.block_d), call.batch, call.heads)
