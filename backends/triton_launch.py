"""Launching a @triton.jit kernel without the JIT's per-call binding.

`fn[grid](*args)` binds every argument, computes Triton's specialization key (dtype and 16-byte
alignment of each pointer, the value class of each int), hashes it and looks the compiled kernel
up, on every call: tens of microseconds of Python for the ~40 arguments of a scan or decode-step
kernel, more than the step kernel itself runs (benchmarks/NOTES.md, "Host overhead").

`launch` keys the compiled kernel by a superset of that specialization (each pointer's dtype and
16-byte alignment, each int, bool and None by value, floats by type: Triton does not specialize
them), the launch options and the device, so a repeated call is one tuple, one dict lookup and
the compiled kernel's own launcher. A miss, an interpreted run or a launch hook (profilers set
them) goes through the JIT as before; the kernel the JIT returns is kept for the next call.
"""
from __future__ import annotations

import os

import torch
from triton import knobs  # module level: _jit_only runs on every fast step launch

_kernels: dict = {}
_MAX_KERNELS = 4096  # one entry per (kernel, shapes' ints, alignments): bounded, cleared when full


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() & 15 == 0
    if isinstance(a, float):
        return float
    return a  # int, bool, None: Triton specializes on (classes of) their values


def _hooked(hook) -> bool:
    # Triton 3.6 keeps launch hooks in HookChain objects (empty by default), earlier versions
    # a callable or None
    return hook is not None and (bool(hook.calls) if hasattr(hook, "calls") else True)


def _jit_only() -> bool:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True
    return _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook)


def unhooked() -> bool:
    """No interpreter and no launch hooks: a launch may bypass the JIT (fastcall's guard)."""
    return not _jit_only()


def _raw(values: list) -> list:
    """Pointers as ints: Triton's launcher takes an int as the address itself, where for a
    tensor it calls data_ptr() and asks the driver about the pointer (~0.3 us per argument)."""
    return [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in values]


def _options(num_warps: int, num_stages: int | None, maxnreg: int | None = None) -> dict:
    opts = {"num_warps": num_warps}
    if num_stages is not None:
        opts["num_stages"] = num_stages
    if maxnreg is not None:  # ptxas' register cap per thread (Triton's CUDA option)
        opts["maxnreg"] = maxnreg
    return opts


def _run(kernel, grid, dev: int, args: list) -> None:
    """A compiled kernel's own launcher on the current stream, hooks off (checked by _jit_only)."""
    g = tuple(grid) + (1,) * (3 - len(grid))
    kernel.run(g[0], g[1], g[2], torch._C._cuda_getCurrentRawStream(dev), kernel.function,
               kernel.packed_metadata, None, None, None, *args)


def launch(fn, grid, args, num_warps: int, num_stages: int | None = None,
           maxnreg: int | None = None) -> None:
    """fn[grid](*args, num_warps=..., num_stages=..., maxnreg=...); args: every kernel
    parameter in order (constexprs included, as the JIT takes them)."""
    opts = _options(num_warps, num_stages, maxnreg)
    if _jit_only():
        fn[grid](*args, **opts)
        return
    dev = torch.cuda.current_device()
    key = (fn, dev, num_warps, num_stages, maxnreg, *map(_arg_key, args))
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = fn[grid](*args, **opts)  # compiles on a miss; returns the CompiledKernel
        if len(_kernels) >= _MAX_KERNELS:
            _kernels.clear()
        _kernels[key] = kernel
        return
    _run(kernel, grid, dev, _raw(args))


class Bound:
    """One kernel on one grid whose integer arguments are fixed (a call plan's sizes and
    strides): only the tensors, at positions `slots`, change from call to call, so the
    compiled kernel is keyed by their dtypes and alignments alone."""

    def __init__(self, fn, grid, slots, num_warps: int, num_stages: int | None = None):
        self.fn, self.slots = fn, tuple(slots)
        self.grid = grid
        self.opts = _options(num_warps, num_stages)
        self.kernels: dict = {}

    def _key(self, values: list):
        """(device, the compiled kernel's key, the slots' pointers)."""
        dev = torch.cuda.current_device()
        ptrs = [values[i].data_ptr() for i in self.slots]
        return dev, (dev, *[values[i].dtype for i in self.slots],
                     *[p & 15 == 0 for p in ptrs]), ptrs

    def __call__(self, values: list) -> None:
        if _jit_only():
            self.fn[self.grid](*values, **self.opts)
            return
        dev, key, ptrs = self._key(values)
        kernel = self.kernels.get(key)
        if kernel is None:
            self.kernels[key] = self.fn[self.grid](*values, **self.opts)
            return
        args = list(values)
        for i, p in zip(self.slots, ptrs):
            args[i] = p
        _run(kernel, self.grid, dev, args)

    def fast_parts(self, values: list):
        """What a C++ launch (fastcall.Launch) of the kernel these values selected needs: the
        parameters' 64-bit cells (pointers 0), each slot's alignment (1 / 0: the kernel was
        specialized on it), the CUfunction, the launch shape and a guard (no launch hooks:
        profilers see the JIT's launches); None where that kernel is not
        compiled yet or takes what the driver call alone does not give (scratch buffers,
        clusters, cooperative or PDL launches, tensor descriptors)."""
        from . import fastcall

        if _jit_only():
            return None
        _, key, ptrs = self._key(values)
        kernel = self.kernels.get(key)
        if kernel is None or kernel.function is None:
            return None
        md = kernel.metadata
        if (getattr(md, "num_ctas", 1) != 1 or md.global_scratch_size or md.profile_scratch_size
                or md.launch_cooperative_grid or md.launch_pdl):
            return None
        types = list(kernel.src.signature.values())
        if len(types) != len(values) or any(not isinstance(t, str) or t.startswith("tensordesc")
                                            for t in types):
            return None
        cells = [fastcall.cell(t, v if not isinstance(v, torch.Tensor) else 0)
                 for t, v in zip(types, values) if t != "constexpr"]
        # the launcher's two trailing scratch pointers (NULL: both sizes are 0)
        cells += [0, 0]
        at = {}  # position in values -> cell, constexprs dropped
        for i, t in enumerate(types):
            if t != "constexpr":
                at[i] = len(at)
        if any(i not in at for i in self.slots):
            return None
        g = tuple(self.grid) + (1,) * (3 - len(self.grid))
        return dict(cells=cells, cell_of=at,
                    aligned={i: int(p & 15 == 0) for i, p in zip(self.slots, ptrs)},
                    fn=kernel.function, grid=g, block=32 * md.num_warps, smem=md.shared,
                    guard=unhooked)
