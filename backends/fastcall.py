"""Prepared launches checked in C++ (fastcall.cpp): the host path of eager decode steps and of
inference scans (ssmgen.ops._make_fast: one-kernel forwards with no input needing a gradient;
a short prefill, b4 d1536 L128, 20 us on the H100 against 333 through the Python plan and
mamba-ssm's 73).

A planned step call (ssmgen.step) still spent ~40-65 us of Python per call on the H100 host
(benchmarks/NOTES.md, "Host overhead"): the plan key reads 7 attributes of each of 10 arguments
(~1 us per tensor there), `torch.empty` and `view` cost 3-4 us each, and Triton's launcher
parses ~40 arguments. A `Launch` does the same checks on the tensors' C++ metadata, allocates
out with `at::empty` and calls the driver's cuLaunchKernel, in one call from Python.

The module is built once per torch / Python / source hash with torch's extension builder
(ninja and a C++ compiler; ~20-30 s) into cache_dir()/fastcall/. A step plan asks for it
without waiting (`module(wait=False)`): the build runs in a thread while calls keep the Python
plan, so a serving loop does not stall for it. The thread is not a daemon: torch's builder
leaves a lock file behind when killed mid-build, on which later builds would wait forever, so a
process that exits during the first build waits for it. Where it cannot be built, or
SSMGEN_FASTCALL=0, `module()` is None and callers keep their Python path: the fast path is only
ever an addition to a working one.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
import warnings
from pathlib import Path

_SRC = Path(__file__).with_name("fastcall.cpp")
_lock = threading.Lock()
_state: dict = {}


def enabled() -> bool:
    return os.environ.get("SSMGEN_FASTCALL", "1") != "0"


def module(wait: bool = True):
    """The built extension, or None: disabled, the build failed (warned once), or, with
    wait=False, still building (started by the first call)."""
    if not enabled():
        return None
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        t = _state.get("thread")
        if t is None:
            t = _state["thread"] = threading.Thread(target=_build_once,
                                                    name="ssmgen-fastcall-build")
            t.start()
    if wait:
        t.join()
    return _state.get("mod")


def building() -> bool:
    """The build thread runs and has not set the module yet."""
    t = _state.get("thread")
    return t is not None and t.is_alive() and "mod" not in _state


def _build_once() -> None:
    _state["mod"] = _build()


def _build():
    import torch
    from torch.utils import cpp_extension

    from ssmgen import render

    src = _SRC.read_bytes()
    tag = hashlib.sha256(src + torch.__version__.encode() + sys.version.encode()).hexdigest()[:12]
    name = f"ssmgen_fastcall_{tag}"
    build = render.cache_dir() / "fastcall" / name
    try:
        build.mkdir(parents=True, exist_ok=True)
        _ninja_on_path()
        return cpp_extension.load(name=name, sources=[str(_SRC)], build_directory=str(build),
                                  extra_cflags=["-O2"], verbose=False)
    except Exception as e:  # no compiler / ninja / headers: the Python path stays
        warnings.warn(f"ssmgen: the C++ launcher (backends/fastcall.cpp) could not be built, "
                      f"eager decode steps and inference scans keep the Python launch path: "
                      f"{e}", RuntimeWarning, stacklevel=2)
        return None


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; a venv's pip-installed ninja is not on it unless the venv
    is activated (`.venv/bin/python -m pytest`), so its folder is added."""
    import shutil

    if shutil.which("ninja") is not None:
        return
    dirs = [os.path.dirname(sys.executable)]
    try:
        import ninja

        dirs.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for d in dirs:
        if shutil.which("ninja", path=d) is not None:
            os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
            return


def make(mod, raw, parts: dict, slots: list, outs: list, device_like: int):
    """A Launch of the kernel that `parts` (a launcher's fast_parts: cells, fn, grid, block,
    smem) describes, checked against the arguments `raw`; slots and outs as Launch takes them.
    None where no CUDA context is current or an argument is not a plain tensor: the caller
    keeps its Python path."""
    import torch

    dev = mod.current_device()
    if dev < 0:
        return None
    try:
        return mod.Launch(tuple(raw), parts["cells"], slots, outs, device_like, dev,
                          torch._C._cuda_getCurrentRawStream, parts["fn"], list(parts["grid"]),
                          parts["block"], parts["smem"])
    except ValueError:
        return None


# -- parameter cells -----------------------------------------------------------------------------
_INT_BITS = {"i1": 8, "i8": 8, "i16": 16, "i32": 32, "i64": 64, "u1": 8, "u8": 8, "u16": 16,
             "u32": 32, "u64": 64}


def cell(ty: str, v) -> int:
    """A kernel parameter's bits in a 64-bit cell (the driver reads the parameter's size from
    the cell's start: little-endian). ty: a Triton signature type; pointers take 0 here."""
    import struct

    if ty.startswith("*"):
        return 0
    if ty in ("fp32", "f32"):
        return struct.unpack("<I", struct.pack("<f", float(v)))[0]
    if ty == "fp64":
        return struct.unpack("<Q", struct.pack("<d", float(v)))[0]
    bits = _INT_BITS.get(ty)
    if bits is None:
        raise ValueError(f"fastcall: kernel parameter type {ty!r} is not supported")
    v = int(v)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ty[0] == "i" else (0, (1 << bits) - 1)
    if ty == "i1":
        lo, hi = 0, 1
    if not lo <= v <= hi:
        raise ValueError(f"fastcall: {v} does not fit a {ty} kernel parameter")
    return v & ((1 << bits) - 1)
