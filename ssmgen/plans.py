"""Call plans: what a repeated call with the same tensor metadata would decide again, decided once.

A public call validates its arguments, picks a backend, looks up the tuned config (which stats
the cache files) and builds the kernels: ~180 us of Python on a CPU core, more than the decode
step's kernel and a third of a small scan's forward (benchmarks/NOTES.md, "Host overhead"). All
of it depends only on the arguments' metadata (shapes, strides, dtypes, devices, conj / neg bits,
requires_grad), the flags and the grad mode, so the outcome is kept under that signature. A call
with an unseen signature takes the full path; the plan is stored only after it succeeded, so a
call that raises never leaves one behind.

Plans go stale when tuning records change: at once when this process writes one, within
RECHECK_S when another process does (re-reading the record files costs ~50 us, so it is not
done on every call).
"""
from __future__ import annotations

import os
import time

import torch

from . import tunecache

RECHECK_S = 1.0
_MAX = 1024  # signatures kept; the table is cleared when full (a new shape per call never hits)


def meta(t):
    """The metadata of one argument that validation and kernel choice read."""
    if isinstance(t, torch.Tensor):
        return (t.shape, t.stride(), t.dtype, t.device, t.requires_grad, t.is_conj(), t.is_neg())
    return t if t is None or isinstance(t, (bool, int, float, str)) else type(t)


def signature(flags: tuple, args) -> tuple | None:
    """A call's plan key: its flags and every argument's metadata; None where an argument has
    no strided metadata (sparse / nested tensors: the full path then reports it)."""
    try:
        return (*flags, *map(meta, args))
    except (RuntimeError, NotImplementedError):
        return None


def enabled() -> bool:
    return os.environ.get("SSMGEN_PLANS", "1") != "0" and not torch.compiler.is_compiling()


def runs_kernels_directly(t: torch.Tensor) -> bool:
    """An eager call on plain tensors with memory may run the custom ops' implementation without
    their dispatch; meta / fake tensors and tracing take the op (its fake implementation)."""
    return (type(t) is torch.Tensor and t.device.type != "meta"
            and not torch.compiler.is_compiling())


def _entry(value) -> list:
    """[value, the records' state it was made under, when that was last checked]."""
    return [value, tunecache.writes, tunecache.all_records(), time.monotonic()]


def _current(entry: list) -> bool:
    """False once this process wrote a record since, or (re-read at most every RECHECK_S)
    another process did."""
    if entry[1] != tunecache.writes:
        return False
    now = time.monotonic()
    if now - entry[3] > RECHECK_S:
        if tunecache.all_records() is not entry[2]:
            return False
        entry[3] = now
    return True


_MAX_FAST = 8  # C++ launches tried per flags before the signature path (recent signatures)


class Table:
    """signature -> plan, with the tuning records' state each plan was made under; and per
    call flags, the C++ launches (backends/fastcall.py) made from those plans, which check a
    call's arguments themselves, so that a hit skips the signature too."""

    def __init__(self):
        self._plans: dict = {}
        self._fast: dict = {}

    def get(self, key):
        hit = self._plans.get(key)
        if hit is None:
            return None
        if not _current(hit):
            return self._drop(key)
        return hit[0]

    def put(self, key, plan) -> None:
        if len(self._plans) >= _MAX:
            self._plans.clear()
        self._plans[key] = _entry(plan)

    def _drop(self, key):
        self._plans.pop(key, None)
        return None

    def fast(self, flags):
        """The C++ launches made under these flags ((launch, guard) pairs, newest first), or
        None when there are none or the records changed since (the same rule as get())."""
        hit = self._fast.get(flags)
        if hit is None:
            return None
        if not _current(hit):
            del self._fast[flags]
            return None
        return hit[0]

    def run_fast(self, flags, raw):
        """The result of the first C++ launch made under these flags that takes this call's
        arguments (each checks them itself, then launches), or None."""
        fast = self.fast(flags)
        if fast is None:
            return None
        poison = os.environ.get("SSMGEN_POISON") == "1"
        for launch, guard in fast:
            if guard is None or guard():
                res = launch.run(raw, poison)
                if res is not None:
                    return res
        return None

    def put_fast(self, flags, launch, guard=None) -> None:
        hit = self._fast.get(flags)
        if hit is None or not _current(hit):
            hit = self._fast[flags] = _entry([])
        hit[0].insert(0, (launch, guard))
        del hit[0][_MAX_FAST:]

    def clear(self) -> None:
        self._plans.clear()
        self._fast.clear()

    def __len__(self):
        return len(self._plans)
