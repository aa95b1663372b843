"""The public selective_scan: validation, backend choice, autograd and torch.library custom ops.

Forward and backward are custom ops (`ssmgen::scan_fwd`, `ssmgen::scan_bwd`) with fake
implementations, so torch.compile traces a model that calls them without a graph break. The
autograd Function saves the inputs and the chunk checkpoints only; backward recomputes states.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import List, Optional

import torch

from . import backends, fallback, plans
from .inputs import normalize
from .reference import selective_scan_ref

from .backends import NAMES as KERNEL_BACKENDS
from .backends import buffers

BACKENDS = KERNEL_BACKENDS + ("reference",)
# At batch x dim <= FEW_ROWS the default is Triton even where the CUDA backend runs: its blocks
# of 16-128 channels leave most SMs idle there. Measured on the H100, forward+backward, defaults
# (benchmarks/results/NVIDIA_H100_80GB_HBM3/reliability_v1/small_rows.json): Triton takes
# 0.32x / 0.36x / 0.67x the CUDA time at 256 / 1024 / 2048 rows, 1.08-1.6x from 4096 rows up.
FEW_ROWS = 2048


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def deterministic_mode() -> bool:
    """torch.use_deterministic_algorithms(True) or SSMGEN_DETERMINISTIC=1: the backward sums
    variable dB / dC without atomics (ScanSpec.deterministic), bit-identical run to run."""
    return (torch.are_deterministic_algorithms_enabled()
            or os.environ.get("SSMGEN_DETERMINISTIC", "0") == "1")


def pick_backend(backend: Optional[str], device: torch.device) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        if backend == "triton" and device.type != "cuda" and not _interpreting():
            raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set "
                             "before ssmgen runs a kernel to use Triton's CPU interpreter")
        if backend == "cuda" and device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}")
        return backend
    if device.type == "cuda":
        # the CUDA backend where it can run: faster forward+backward than Triton on every
        # suite shape (benchmarks/NOTES.md); Triton where CuPy or a CUDA compiler is missing
        from ssmgen.backends import cuda_runtime

        return "cuda" if cuda_runtime.available() else "triton"
    if _interpreting():
        return "triton"
    return "reference"


def _split_config(config):
    """Public `config` -> (chunk_len or None, the rest or None): a dict of kernel config fields
    (both kernels) or {"fwd": {...}, "bwd": {...}}, where "chunk_len" goes to the spec; or a
    backend's ScanConfig; or None."""
    from ssmgen.backends.config import ScanConfigBase

    if config is None or isinstance(config, ScanConfigBase):
        return None, config
    if not isinstance(config, dict):
        raise TypeError(f"config must be None, a dict or a ScanConfig, got {type(config).__name__}")
    config = dict(config)
    chunk_len = config.pop("chunk_len", None)
    return chunk_len, (config or None)


def _backend_config(mod, cfg):
    """A dict or ScanConfig -> the backend's ScanConfig (or None)."""
    if cfg is None or isinstance(cfg, mod.ScanConfig):
        return cfg
    if isinstance(cfg, dict):
        return mod.ScanConfig.from_dict(cfg)
    raise TypeError(f"config is a {type(cfg).__module__}.{type(cfg).__name__}, not this "
                    f"backend's ScanConfig ({mod.__name__})")


def _kernel_config(backend, call, cfg, chunk_len, args, variants):  # the call's own, to tune on a miss
    """The config a kernel call runs with, and the call carrying the chunk_len it chose.
    No config given: the tuned record for this GPU, spec and shape bucket (see
    ssmgen.autotune.choose), else the backend's heuristic default."""
    from ssmgen import autotune, backends

    mod = backends.get(backend)
    cfg = _backend_config(mod, cfg)
    if cfg is None and chunk_len is None:  # neither kernel config nor chunk_len given
        try:
            chunk, cfg, _ = autotune.choose(call, backend)
        except autotune.NeedsTuning:
            rec = autotune.tune(args[:8], args[8], backend, variants=variants)
            chunk, cfg = rec["config"]["chunk_len"], mod.ScanConfig.from_dict(
                {k: v for k, v in rec["config"].items() if k != "chunk_len"})
        call = call.with_chunk_len(chunk)
    elif chunk_len is None:
        call = call.with_chunk_len(mod.default_chunk_len(call.spec))
    cfg = cfg or mod.default_config(call.spec)
    cfg.fwd.check(call.spec, "fwd")
    cfg.bwd.check(call.spec, "bwd")
    return call, cfg


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(0)


# -- custom ops ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def _decode(config: str):
    """"backend:encoded config" -> (backend module, ScanConfig)."""
    name, enc = config.split(":", 1)
    mod = backends.get(name)
    return mod, mod.ScanConfig.decode(enc)


@torch.library.custom_op("ssmgen::scan_fwd", mutates_args=())
def scan_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
             delta_bias: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
             cu_seqlens: Optional[torch.Tensor], delta_softplus: bool, return_last_state: bool,
             reverse: bool, chunk_len: int, config: str, save_ckpt: bool) -> List[torch.Tensor]:
    call = normalize(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                     chunk_len, initial_state=initial_state, cu_seqlens=cu_seqlens,
                     reverse=reverse, check_values=False)  # checked by selective_scan
    return _forward(call, config, save_ckpt)


def _forward(call, config: str, save_ckpt: bool) -> List[torch.Tensor]:
    mod, cfg = _decode(config)
    out, last, ckpt = mod.forward(call, cfg, save_ckpt)
    return [out, call.u.new_empty(0, dtype=torch.float32) if last is None else last, ckpt]


@scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
      return_last_state, reverse, chunk_len, config, save_ckpt):
    b, d, L = u.shape
    N = A.shape[1]
    K = (2,) if A.is_complex() else ()
    rows = b if cu_seqlens is None else cu_seqlens.shape[0] - 1
    last = (u.new_empty((rows, d, N), dtype=A.dtype) if return_last_state
            else u.new_empty(0, dtype=torch.float32))
    nch = -(-L // chunk_len)
    ckpt = u.new_empty((b, d, nch, N) + K if save_ckpt else (1,), dtype=torch.float32)
    return [torch.empty_like(u, memory_format=torch.contiguous_format), last, ckpt]


@torch.library.custom_op("ssmgen::scan_bwd", mutates_args=())
def scan_bwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
             delta_bias: Optional[torch.Tensor], initial_state: Optional[torch.Tensor],
             cu_seqlens: Optional[torch.Tensor], delta_softplus: bool, return_last_state: bool,
             reverse: bool, chunk_len: int, config: str, ckpt: torch.Tensor, dout: torch.Tensor,
             dlast: Optional[torch.Tensor], deterministic: bool) -> List[torch.Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state) in the inputs' own
    shapes and dtypes; an absent optional input gets an empty tensor. dlast: the last state's
    gradient (None: zero). deterministic: variable dB / dC without atomics."""
    return _backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                     delta_softplus, return_last_state, reverse, chunk_len, config, ckpt, dout,
                     dlast, deterministic)


def _backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
              return_last_state, reverse, chunk_len, config, ckpt, dout, dlast, deterministic):
    call = normalize(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                     chunk_len, initial_state=initial_state, cu_seqlens=cu_seqlens,
                     reverse=reverse, check_values=False)  # checked by selective_scan
    if deterministic and (call.spec.is_variable_B or call.spec.is_variable_C):
        call = dataclasses.replace(call, spec=call.spec.replace(deterministic=True))
    mod, cfg = _decode(config)
    g = mod.backward(call, cfg, ckpt, dout, dlast)
    raw = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    return _as_inputs(_input_forms(raw, call.spec.complex_A), g, lambda: _empty(u))


GRAD_NAMES = ("du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddbias", "dinit")  # raw's order


def _input_forms(raw, cplx: bool) -> list:
    """Per input of (u, delta, A, B, C, D, z, delta_bias, initial_state): its (shape, dtype,
    complex) that its gradient takes, or None where the input is."""
    return [None if x is None else (x.shape, x.dtype, cplx and x.is_complex()) for x in raw]


def _as_inputs(forms, g: dict, empty=lambda: None) -> list:
    """The kernels' finished gradients (canonical form, by GRAD_NAMES) in the inputs' own
    shapes and dtypes; empty() for an absent input."""
    res = []
    for form, name in zip(forms, GRAD_NAMES):
        grad = g.get(name)
        if form is None or grad is None:
            res.append(empty())
            continue
        shape, dtype, cplx = form
        if cplx:
            grad = torch.view_as_complex(grad.reshape(shape + (2,)))
        res.append(grad.reshape(shape).to(dtype))
    return res


@scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, delta_softplus,
      return_last_state, reverse, chunk_len, config, ckpt, dout, dlast, deterministic):
    like = [u, delta, A, B, C, D, z, delta_bias, initial_state]
    return [torch.empty_like(x, memory_format=torch.contiguous_format) if x is not None
            else u.new_empty(0) for x in like]


class SelectiveScanFn(torch.autograd.Function):
    """Saves the inputs and the chunk checkpoints (never per-timestep states)."""

    # Eager calls (`call` given: selective_scan validated it) run the ops' implementations
    # directly: the custom-op dispatch and a second validation cost ~60 us of Python per call.
    # Under torch.compile `call` is None and the custom ops are what the graph records.
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                delta_softplus, return_last_state, reverse, chunk_len, config, call=None):
        # checkpoints only when a backward can follow (grad mode is off inside forward itself)
        save = any(isinstance(x, torch.Tensor) and x.requires_grad
                   for x in (u, delta, A, B, C, D, z, delta_bias, initial_state))
        if call is not None:
            out, last, ckpt = _forward(call, config, save)
        else:
            out, last, ckpt = torch.ops.ssmgen.scan_fwd(u, delta, A, B, C, D, z, delta_bias,
                                                        initial_state, cu_seqlens, delta_softplus,
                                                        return_last_state, reverse, chunk_len,
                                                        config, save)
        ctx.eager = call is not None
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens,
                              ckpt)
        ctx.flags = (delta_softplus, return_last_state, reverse, chunk_len, config)
        if not return_last_state:
            ctx.mark_non_differentiable(last)  # an empty placeholder
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, h0, cu, ckpt = ctx.saved_tensors
        softplus, ret_last, reverse, chunk_len, config = ctx.flags
        eager = ctx.eager and not torch.compiler.is_compiling()  # compiled autograd: the op
        bwd = _backward if eager else torch.ops.ssmgen.scan_bwd
        g = bwd(u, delta, A, B, C, D, z, delta_bias, h0, cu, softplus, ret_last, reverse,
                chunk_len, config, ckpt, dout, dlast if ret_last else None, deterministic_mode())
        opt = [x if inp is not None else None
               for x, inp in zip(g[5:], (D, z, delta_bias, h0))]
        return (*g[:5], *opt, None, None, None, None, None, None, None)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, cu_seqlens=None,
                   reverse=False, backend=None, config=None):
    """Drop-in for mamba-ssm's selective_scan_fn (same arguments, shapes and returns).

    u, delta, z: (batch, dim, L); A: (dim, N) float32 or complex64; B, C: (dim, N),
    (batch, N, L) or (batch, groups, N, L) (complex A: complex tensors, or mamba's interleaved
    real form (..., 2L)); D, delta_bias: (dim,) float32. Returns out, or (out, last_state);
    the last state is differentiable (its gradient flows back into every input).

    Beyond mamba-ssm (keyword-only): initial_state (batch, dim, N) float32 / complex64, the state
    before the first step, with its gradient; cu_seqlens (num_seqs + 1,) int: u is a packed
    (1, dim, total_L) batch of sequences, each scanned from a zero state or, with
    initial_state (num_seqs, dim, N), from its own row, last_state per sequence
    (num_seqs, dim, N); reverse=True scans from t = L-1 down to 0.

    backend: "triton", "cuda", "reference" or None (on CUDA tensors the CUDA backend where
    CuPy and a CUDA compiler are present and batch x dim > FEW_ROWS, else Triton (then, if
    its kernels cannot be built, the next backend with one warning); Triton's interpreter under
    TRITON_INTERPRET=1; else the reference). config: a dict of the backend's kernel config
    fields (both kernels), or {"fwd": {...}, "bwd": {...}}, optionally with "chunk_len"; None
    takes the tuned record or the default.
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    variants = dict(initial_state=initial_state, cu_seqlens=cu_seqlens, reverse=reverse)
    raw = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    flags = (backend, torch.is_grad_enabled(), delta_softplus, return_last_state, reverse)
    if config is None and cu_seqlens is None and plans.enabled():
        res = _plans.run_fast(flags, raw)  # an inference call seen before: checked, launched in C++
        if res is not None:
            return _fast_result(res, return_last_state, A)
        if flags[1]:  # a training call seen before: its forward launched in C++ (_TrainPlan)
            res = _plans.run_fast(flags + ("train",), raw)
            if res is not None:
                return res
    key = (plans.signature(flags[:2], args + tuple(variants.values()))
           if config is None and plans.enabled() else None)
    plan = _plans.get(key) if key is not None else None
    if plan is not None:  # seen before: validation (it passes again), backend, config, kernels
        call = normalize(*args, chunk_len=plan[1], **variants)  # these tensors' canonical views
        if not plan[2][0]:
            res = _make_fast(plan, call, raw, flags)
            if res is not None:
                return res
        return _apply(plan[0], call, args, variants)
    chunk_len, cfg = _split_config(config)
    # every input check, before any rendering
    call = normalize(*args, chunk_len=chunk_len, **variants)
    name = pick_backend(backend, call.u.device)
    if backend is None and name == "cuda" and call.batch * call.dim <= FEW_ROWS:
        name = "triton"  # too few rows to fill the GPU with the CUDA backend's channel blocks
    # a backend ssmgen chose may be replaced when its kernels cannot be built (ssmgen.fallback);
    # not while torch.compile traces (the kernels were built by the eager warm-up, if any)
    auto = backend is None and config is None and not torch.compiler.is_compiling()
    while name != "reference":
        try:
            return _kernel_call(name, call, cfg, chunk_len, args, variants, auto, key)
        except fallback.faults() as e:
            if not auto:
                raise
            name = fallback.next_backend(name, call, e, _interpreting())
    res = selective_scan_ref(*args, **variants)
    if not return_last_state:
        return res.to(u.dtype)
    return res[0].to(u.dtype), res[1].to(A.dtype)


def _kernel_call(name, call, cfg, chunk_len, args, variants, prepare, key):
    """Runs the call on a kernel backend; stores its plan under `key` (if not None) once it ran."""
    call, cfg = _kernel_config(name, call, cfg, chunk_len, args, variants)
    backends.get(name).check_launch(call)
    if prepare:
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(x, torch.Tensor) and x.requires_grad
            for x in args[:8] + (call.initial_state,))
        fallback.prepare(name, call, cfg, needs_grad)
    config = _encode(name, cfg)
    res = _apply(config, call, args, variants)
    if key is not None:   # (config, chunk_len, [a C++ launch was tried])
        _plans.put(key, (config, call.spec.chunk_len, [False]))
    return res


def _apply(config: str, call, args, variants):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state = args
    eager = plans.runs_kernels_directly(u)
    out, last = SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, call.initial_state,
                                      call.cu_seqlens, delta_softplus, return_last_state,
                                      variants["reverse"], call.spec.chunk_len,
                                      config, call if eager else None)
    return (out, last) if return_last_state else out


_plans = plans.Table()


def _fast_result(res, return_last_state: bool, A):
    if not return_last_state:
        return res
    out, last = res
    return out, torch.view_as_complex(last) if A.is_complex() else last


def _make_fast(plan, call, raw, flags):
    """An eager call on CUDA tensors without packed sequences: runs this call's forward through
    the backend's `forward_fast` and registers a fastcall.Launch of it under the call's flags,
    so that later calls with the same argument metadata skip the signature, normalization and
    the Python launch (benchmarks/NOTES.md, "Inference scans launched in C++"). A training
    call (an input needs a gradient) gets a _TrainPlan: the forward with checkpoints, its
    backward launched in C++ as well. Returns this call's result, or None where no launch was
    tried (the plan path runs it). Tried once per plan, again while the module builds."""
    from .backends import fastcall

    u = call.u
    if call.spec.varlen or u.device.type != "cuda" or not plans.runs_kernels_directly(u):
        plan[2][0] = True
        return None
    mod = fastcall.module(wait=False)
    if mod is None:
        plan[2][0] = not fastcall.building()
        return None
    plan[2][0] = True
    train = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad
                                            for x in raw)
    ptr_of = _pointers(raw)
    if ptr_of is None:  # two arguments on one address: slots would be ambiguous
        return None
    backend, cfg = _decode(plan[0])
    parts, values, where, fixed, (out, last, ckpt) = backend.forward_fast(call, cfg, train)
    launch = keep = None
    if parts is not None:
        launch, keep = _launch_of(mod, parts, values, raw, ptr_of, where, fixed)
    guard = None if parts is None else functools.partial(_guard, parts["guard"], keep)
    if train:
        entry = _TrainPlan(plan[0], call, raw, launch)
        if launch is not None:
            _plans.put_fast(flags + ("train",), entry, guard)
        else:  # this call's node alone: no backward launch to make for later calls
            entry.bwd_tried = True
        return entry.wrap((out, ckpt) if last is None else (out, ckpt, last), raw)
    if launch is not None:
        _plans.put_fast(flags, launch, guard)
    return _fast_result((out, last) if call.spec.return_last_state else out,
                        call.spec.return_last_state, call.A)


def _pointers(raw):
    """{data_ptr: position} of the tensors in raw, or None where two share an address."""
    ptr_of = {}
    for j, x in enumerate(raw):
        if isinstance(x, torch.Tensor):
            if x.data_ptr() in ptr_of:
                return None
            ptr_of[x.data_ptr()] = j
    return ptr_of


# Kernel parameters whose argument (by position in raw: the forward's nine inputs, then the
# backward's ckpt, dout, dlast) normalization, or the backward, makes contiguous where its
# last stride is not 1 (a model's transposed delta, z, dout): a C++ launch copies them too.
_COPIED = {"u": 0, "delta": 1, "z": 6, "dout": 10}


def _launch_of(mod, parts, values, raw, ptr_of, where, fixed, zero=()):
    """(a fastcall.Launch of the kernel a backend's fast_parts describe, or None; the fixed
    buffers it points at, which the caller keeps alive). where: {output name: position in
    values}, each output made per call like this call's buffer (u's dtype or fp32), zero-filled
    where named in `zero` (the kernel adds into it). Every other pointer must be one of
    raw's tensors (by address: the canonical views normalization makes share it), a
    contiguous copy of one (_COPIED: the launch makes it per call) or a fixed placeholder;
    anything else (another copy) leaves the Python path."""
    from .backends import fastcall

    at, cells, slots = parts["cell_of"], list(parts["cells"]), []
    like = {raw[0].dtype: 0, torch.float32: -1}  # Launch's dtype code: u's, or float32
    if any(values[i].dtype not in like for i in where.values()):
        return None, None
    outs = [(i, like[values[i].dtype], n in zero) for n, i in where.items()]
    taken = set(where.values())
    for i in parts["slots"]:
        if i in taken:
            continue
        if i in fixed:  # placeholders (never written): fixed pointers, kept alive by the caller
            cells[at[i]] = values[i].data_ptr()
            continue
        j, copy = ptr_of.get(values[i].data_ptr()), 0
        if j is None:
            j, copy = _COPIED.get(parts["names"][i]), 1
            x = raw[j] if j is not None and j < len(raw) else None
            v = values[i]
            if not (isinstance(x, torch.Tensor) and x.stride(-1) != 1 and v.is_contiguous()
                    and v.shape == x.shape and v.dtype == x.dtype):
                return None, None
        slots.append((at[i], j, parts["aligned"][i], copy))
    launch = fastcall.make(mod, raw, dict(parts, cells=cells), slots,
                           [(at[i], like, list(values[i].shape), z) for i, like, z in outs],
                           device_like=0)
    return launch, [values[i] for i in fixed]


class _TrainPlan:
    """A planned training call's C++ launches (benchmarks/NOTES.md, "Training calls launched
    in C++"): the forward with checkpoints (its Launch checks the call's arguments), and the
    backward's, made at the first backward through this plan and checked against the saved
    inputs, the checkpoints, dout and the last state's gradient. What the backward's Python
    does then is fixed by metadata too: finishing the kernel's buffers (buffers.grad_steps)
    and shaping them as the inputs (_input_forms). Any mismatch takes the ordinary backward."""

    def __init__(self, config: str, call, raw, fwd):
        self.config, self.fwd = config, fwd
        spec = call.spec
        self.flags = (spec.delta_softplus, spec.return_last_state, spec.reverse, spec.chunk_len)
        self.forms = _input_forms(raw, spec.complex_A)
        self.cplx_last = spec.complex_A and spec.return_last_state
        self.bwd = self.bwd_tried = self.bwd_guard = None
        self.names = self.steps = self.keep = None

    def run(self, raw, poison: bool):
        """Table.run_fast's call: the forward's C++ launch, wrapped for autograd."""
        res = self.fwd.run(raw, poison)
        return None if res is None else self.wrap(res, raw)

    def wrap(self, res, raw):
        """(out, ckpt[, raw last state]) -> the public result, recorded for autograd."""
        outs = _LaunchedScanFn.apply(self, list(res), *raw)
        if not self.flags[1]:
            return outs
        out, last = outs
        return out, torch.view_as_complex(last) if self.cplx_last else last

    def backward(self, raw, ckpt, dout, dlast) -> list:
        det = deterministic_mode()
        bargs = (*raw, ckpt, dout, dlast)
        if self.bwd is not None and not det and (self.bwd_guard is None or self.bwd_guard()):
            bufs = self.bwd.run(bargs, os.environ.get("SSMGEN_POISON") == "1")
            if bufs is not None:
                g = dict(zip(self.names, bufs if isinstance(bufs, tuple) else (bufs,)))
                return _as_inputs(self.forms, buffers.apply_grad_steps(self.steps, g))
        softplus, ret_last, reverse, chunk_len = self.flags
        if self.bwd_tried or det:
            g = _backward(*raw, None, softplus, ret_last, reverse, chunk_len, self.config,
                          ckpt, dout, dlast, det)
            return [gr if x is not None else None for gr, x in zip(g, raw)]
        self.bwd_tried = True
        call = normalize(*raw[:8], softplus, ret_last, chunk_len, initial_state=raw[8],
                         reverse=reverse, check_values=False)
        backend, cfg = _decode(self.config)
        parts, values, where, fixed, g, steps = backend.backward_fast(call, cfg, ckpt, dout,
                                                                      dlast)
        grads = _as_inputs(self.forms, buffers.apply_grad_steps(steps, dict(g)))
        from .backends import fastcall

        mod, ptr_of = fastcall.module(wait=False), _pointers(bargs)
        if mod is not None and ptr_of is not None and parts is not None:
            zero = [f"d{X}" for X in ("B", "C") if getattr(call, X).dim() == 4]  # atomics' sums
            launch, keep = _launch_of(mod, parts, values, bargs, ptr_of, where, fixed, zero)
            if launch is not None:
                self.bwd, self.names, self.steps, self.keep = launch, list(where), steps, keep
                self.bwd_guard = parts["guard"]
        return grads


class _LaunchedScanFn(torch.autograd.Function):
    """The autograd node of a _TrainPlan's call: saves the inputs and the checkpoints, as
    SelectiveScanFn does; the outputs were made by the C++ launch before."""

    @staticmethod
    def forward(ctx, plan, res, *raw):
        ctx.plan = plan
        ctx.save_for_backward(*raw, res[1])
        if len(res) == 2:
            return res[0]
        return res[0], res[2]

    @staticmethod
    def backward(ctx, dout, dlast=None):
        *raw, ckpt = ctx.saved_tensors
        return (None, None, *ctx.plan.backward(raw, ckpt, dout, dlast))


def _guard(guard, placeholders) -> bool:   # (holds the launch's fixed buffers)
    return guard is None or guard()


def _encode(name, cfg) -> str:
    return f"{name}:{cfg.encode()}"
