"""CUDA runtime of the CUDA backend: compile a rendered source to a cubin, cache it on disk, load
it and launch it on PyTorch's current stream.

Compilation: NVRTC (through CuPy's binding) when it loads, else the toolkit's nvcc; both compile
for the device's own architecture (sm_90 on Hopper). An NVRTC that loads but cannot compile for
a reason other than the source (its builtins library missing, an architecture it does not know)
gives one warning and this process compiles with nvcc from then on. Cubins are cached under
cache_dir()/cuda/ by a hash of source, options, architecture and compiler version, written
atomically, so a variant compiles once per machine. A compile error raises CudaCompileError
with the compiler's messages, which name the rendered source file (kept in the cache) and line.
Loading and launching go through CuPy (RawModule on the cubin, launched inside an
ExternalStream wrapping torch's current stream).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from ssmgen import render

OPTIONS = ("-std=c++17", "-lineinfo")


class CudaCompileError(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def _nvrtc():
    """CuPy's NVRTC binding, or None where it does not load (no CuPy, no libnvrtc)."""
    if os.environ.get("SSMGEN_NVRTC", "1") == "0":
        return None
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
        return nvrtc
    except Exception:  # ImportError, or the library itself is missing
        return None


_NVRTC_COMPILATION = 6     # NVRTC_ERROR_COMPILATION: the source is at fault, not NVRTC
_nvrtc_failed: list = []   # the fault that made this process give up on NVRTC (at most one)


class _NvrtcUnusable(Exception):
    """NVRTC loaded but failed for a reason other than the source."""


def _nvrtc_usable():
    """NVRTC's binding, or None where it does not load or failed before in this process."""
    return None if _nvrtc_failed else _nvrtc()


def _give_up_nvrtc(e: Exception) -> None:
    _nvrtc_failed.append(e)
    # the cubin cache key names the compiler; without nvcc or a pack, Triton is chosen from now on
    for memo in (compiler_version, available):
        getattr(memo, "cache_clear", lambda: None)()
    warnings.warn(f"ssmgen: NVRTC cannot compile here ({e}); "
                  + (f"compiling with nvcc ({nvcc_path()}) instead" if nvcc_path() else
                     "and nvcc is not found: the CUDA backend is unavailable in this process"))


def _compile(source: str, src_path: Path, arch: int) -> bytes:
    """A cubin from NVRTC, else (missing or broken NVRTC) from nvcc."""
    if _nvrtc_usable() is not None:
        try:
            return _compile_nvrtc(source, src_path, arch)
        except _NvrtcUnusable as e:
            _give_up_nvrtc(e)
    return _compile_nvcc(src_path, arch)[0]


@functools.lru_cache(maxsize=None)
def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and os.path.exists(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    return None


@functools.lru_cache(maxsize=None)
def compiler_version() -> str:
    nv = _nvrtc_usable()
    if nv is not None:
        return "nvrtc-%d.%d" % tuple(nv.getVersion())
    if nvcc_path():
        out = subprocess.run([nvcc_path(), "--version"], capture_output=True, text=True).stdout
        return "nvcc-" + out.strip().splitlines()[-1].split()[-1]
    raise CudaCompileError("no CUDA compiler: neither NVRTC (via CuPy) nor nvcc was found; "
                           "install cupy-cuda13x or put the CUDA toolkit's nvcc on PATH")


def compiler() -> str:
    return "nvrtc" if _nvrtc_usable() is not None else "nvcc"


def _compile_nvrtc(source: str, src_path: Path, arch: int, extra=()) -> bytes:
    """CudaCompileError for an error in the source; _NvrtcUnusable for any other failure."""
    nv = _nvrtc()
    try:
        prog = nv.createProgram(source, str(src_path), [], [])
    except Exception as e:
        raise _NvrtcUnusable(f"createProgram: {e}") from e
    try:
        opts = [f"--gpu-architecture=sm_{arch}", *OPTIONS, *extra]
        try:
            nv.compileProgram(prog, opts)
        except nv.NVRTCError as e:
            try:
                log = nv.getProgramLog(prog)
            except Exception:
                log = ""
            if getattr(e, "status", _NVRTC_COMPILATION) != _NVRTC_COMPILATION:
                raise _NvrtcUnusable(f"{e}; {log.strip()[:300]}") from e
            raise CudaCompileError(f"NVRTC failed on {src_path}:\n{log}") from None
        try:
            return bytes(nv.getCUBIN(prog))
        except Exception as e:
            raise _NvrtcUnusable(f"getCUBIN: {e}") from e
    finally:
        try:
            nv.destroyProgram(prog)
        except Exception:
            pass


def _compile_nvcc(src_path: Path, arch: int, extra=(), verbose=False) -> tuple[bytes, str]:
    nvcc = nvcc_path()
    if nvcc is None:
        raise CudaCompileError("nvcc not found (and NVRTC unavailable)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k.cubin"
        cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", *OPTIONS, *extra, "-o", str(out), str(src_path)]
        if verbose:
            cmd.insert(1, "-Xptxas=-v")
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise CudaCompileError(f"nvcc failed on {src_path}:\n{r.stderr}")
        return out.read_bytes(), r.stderr


def cubin_path(name: str, source: str, arch: int) -> Path:
    h = hashlib.sha256("\0".join([source, " ".join(OPTIONS), str(arch), compiler_version()])
                       .encode()).hexdigest()[:16]
    return render.cache_dir() / "cuda" / f"{name}_sm{arch}_{h}.cubin"


def pack_dirs() -> list:
    """Cubin packs made by `ssmgen build-ext` (SSMGEN_CUDA_PACK, os.pathsep-separated)."""
    return [Path(p) for p in os.environ.get("SSMGEN_CUDA_PACK", "").split(os.pathsep) if p]


def pack_name(name: str, source: str, arch: int) -> str:
    """A pack's file name: keyed by the exact source and architecture, not by the compiler, so
    a deployment without any CUDA compiler finds it."""
    return f"{name}_sm{arch}_{hashlib.sha256(source.encode()).hexdigest()[:16]}.cubin"


def build_pack(kernels, archs, out: Path) -> list:
    """Compiles (name, source) pairs for every arch into `out` (a cubin pack); returns paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, source in kernels:
        for arch in archs:
            dst = out / pack_name(name, source, arch)
            if not dst.exists():
                src_path = render.write_source("cuda", name, source, suffix=".cu")
                data = _compile(source, src_path, arch)
                fd, tmp = tempfile.mkstemp(dir=out, prefix=".tmp_", suffix=".cubin")
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, dst)
            paths.append(dst)
    return paths


def compile_cubin(name: str, source: str, arch: int) -> Path:
    """The cubin for (source, arch): from a pack, else the cache, else compiled now."""
    for d in pack_dirs():
        hit = d / pack_name(name, source, arch)
        if hit.exists():
            return hit
    path = cubin_path(name, source, arch)
    if _is_elf(path):  # a truncated or damaged cached cubin is compiled again
        return path
    src_path = render.write_source("cuda", name, source, suffix=".cu")
    data = _compile(source, src_path, arch)
    path = cubin_path(name, source, arch)  # keyed by the compiler that ran (NVRTC may have failed)
    # atomic; an unwritable cache directory falls back to a temporary one (render.write_file)
    return render.write_file(path.parent.name, path.name, data)


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def resource_usage(name: str, source: str, arch: int) -> dict:
    """ptxas's report (registers, spill bytes, stack, shared memory) via nvcc -Xptxas -v."""
    import re

    src_path = render.write_source("cuda", name, source, suffix=".cu")
    _, log = _compile_nvcc(src_path, arch, verbose=True)
    use = {"registers": None, "spill_stores": 0, "spill_loads": 0, "stack": 0}
    m = re.search(r"Used (\d+) registers", log)
    if m:
        use["registers"] = int(m.group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        use["stack"], use["spill_stores"], use["spill_loads"] = map(int, m.groups())
    return use


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """CuPy imports (loading and launching) and a compiler or a pack exists."""
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return _nvrtc_usable() is not None or nvcc_path() is not None or bool(pack_dirs())


# -- loading and launching (CUDA devices only) ------------------------------------------------
_functions: dict = {}
_streams: dict = {}


def function(name: str, source: str, device_index: int, smem_bytes: int):
    """The loaded kernel for this device, with its dynamic shared-memory limit raised."""
    key = (name, source, device_index)
    fn = _functions.get(key)
    if fn is None:
        import cupy
        import torch

        major, minor = torch.cuda.get_device_capability(device_index)
        path = compile_cubin(name, source, major * 10 + minor)
        with cupy.cuda.Device(device_index):
            fn = cupy.RawModule(path=str(path)).get_function(name)
            if smem_bytes > 48 * 1024:
                fn.max_dynamic_shared_size_bytes = smem_bytes
        _functions[key] = fn
    return fn


@functools.lru_cache(maxsize=None)
def _cu_launch():
    """The driver's cuLaunchKernel through ctypes, or None (no libcuda, SSMGEN_CUDA_LAUNCH=cupy)."""
    if os.environ.get("SSMGEN_CUDA_LAUNCH") == "cupy":
        return None
    import ctypes

    try:
        f = ctypes.CDLL("libcuda.so.1").cuLaunchKernel
    except (OSError, AttributeError):
        return None
    u = ctypes.c_uint
    f.argtypes = [ctypes.c_void_p, u, u, u, u, u, u, u, ctypes.c_void_p, ctypes.c_void_p,
                  ctypes.c_void_p]
    f.restype = ctypes.c_int
    return f


_occupancy: dict = {}


def blocks_per_sm(fn, threads: int, smem_bytes: int) -> int:
    """Blocks of this loaded kernel one SM holds at once (the driver's occupancy calculator:
    registers, shared memory, threads), at least 1."""
    key = (_ptr(fn), threads, smem_bytes)
    n = _occupancy.get(key)
    if n is None:
        import ctypes

        try:
            f = ctypes.CDLL("libcuda.so.1").cuOccupancyMaxActiveBlocksPerMultiprocessor
            f.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int,
                          ctypes.c_size_t]
            out = ctypes.c_int(0)
            rc = f(ctypes.byref(out), ctypes.c_void_p(_ptr(fn)), threads, smem_bytes)
            n = out.value if rc == 0 else 0
        except (OSError, AttributeError):
            n = 0
        if n <= 0:  # no driver entry point: registers and shared memory by hand
            regs = -(-max(1, getattr(fn, "num_regs", 64)) // 8) * 8
            n = min(65536 // (regs * threads), 233472 // (smem_bytes + 1024), 2048 // threads, 32)
        n = _occupancy[key] = max(1, n)
    return n


def launch(fn, grid, threads: int, smem_bytes: int, args: list, device_index: int) -> None:
    """args: ints (pointers and sizes, passed as 64-bit values) in the kernel's order."""
    Prepared(fn, grid, threads, smem_bytes, args, device_index)([])


_fn_ptrs: dict = {}


def _ptr(fn) -> int:
    """The CUfunction handle of a loaded kernel (CuPy's RawKernel wraps a Function)."""
    p = _fn_ptrs.get(id(fn))
    if p is None:  # loaded kernels live in _functions for the process: their ids stay unique
        p = _fn_ptrs[id(fn)] = getattr(fn, "ptr", None) or fn.kernel.ptr
    return p


class Prepared:
    """A kernel launch whose arguments may change at a few positions from call to call (a call
    plan's pointers): the int64 values and their address array are built once, a call writes
    the changed values and goes to the driver's cuLaunchKernel (~2 us of Python; the driver
    copies the values at the call, so the arrays are reused, a lock keeping two threads from
    interleaving). CuPy's launcher, ~10-20 us more per call in argument boxing and device /
    stream switches, where the device is not the current one or the driver call fails (CuPy
    then raises its error for a real fault)."""

    def __init__(self, fn, grid, threads: int, smem_bytes: int, args: list, device_index: int):
        import ctypes
        import threading

        self.fn, self.threads, self.smem, self.dev = fn, threads, smem_bytes, device_index
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        n = len(args)
        self._vals = (ctypes.c_int64 * n)(*args)
        base = ctypes.addressof(self._vals)
        self._addrs = (ctypes.c_void_p * n)(*range(base, base + 8 * n, 8))
        self._lock = threading.Lock()

    def __call__(self, changes) -> None:
        """changes: (position, int value) pairs."""
        import torch

        cu = _cu_launch()
        if cu is not None and torch.cuda.current_device() == self.dev:
            stream = torch._C._cuda_getCurrentRawStream(self.dev)
            g = self.grid
            with self._lock:
                for i, v in changes:
                    self._vals[i] = v
                if cu(_ptr(self.fn), g[0], g[1], g[2], self.threads, 1, 1, self.smem, stream,
                      self._addrs, None) == 0:
                    return
        args = list(self._vals)
        for i, v in changes:
            args[i] = v
        _launch_cupy(self.fn, self.grid, self.threads, self.smem, args, self.dev)


def _launch_cupy(fn, grid, threads: int, smem_bytes: int, args: list, device_index: int) -> None:
    import cupy
    import numpy as np
    import torch

    handle = torch.cuda.current_stream(device_index).cuda_stream
    stream = _streams.get(handle)
    if stream is None:
        stream = _streams[handle] = cupy.cuda.ExternalStream(handle, device_index)
    with cupy.cuda.Device(device_index), stream:
        fn(grid, (threads,), [np.int64(a) for a in args], shared_mem=smem_bytes)
