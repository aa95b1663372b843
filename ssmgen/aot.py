"""Ahead-of-time compilation of rendered Triton kernels for a GPU architecture, without a GPU.

`compile_kernel` runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the
ptxas Triton ships) for GPUTarget("cuda", cc, 32), and reads registers, spills and shared memory
from the cubin with the cuobjdump Triton ships. Tests use it to prove every template variant
compiles for sm_80 and sm_90 on a CPU-only machine.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .spec import ScanSpec

_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}


@dataclass
class CompileReport:
    name: str
    arch: int
    registers: int
    spill_bytes: int  # local memory per thread (stack frame + spills)
    shared_bytes: int
    seconds: float
    ptx_lines: int


def _signature(spec: ScanSpec, kind: str):
    from ssmgen.backends.triton_backend import kernel_args

    io = _PTR[spec.dtype]
    io_names = {"u_ptr", "delta_ptr", "z_ptr", "out_ptr", "dout_ptr", "du_ptr", "ddelta_ptr",
                "dz_ptr"}
    sig, constexprs = {}, {}
    for arg in kernel_args(spec, kind):
        name = arg.split(":")[0]
        if arg.endswith("tl.constexpr"):
            sig[name] = "constexpr"
            constexprs[name] = True
        elif name in ("B_ptr", "C_ptr"):
            variable = spec.is_variable_B if name == "B_ptr" else spec.is_variable_C
            sig[name] = io if variable else "*fp32"
        elif name.endswith("_ptr"):
            sig[name] = io if name in io_names else "*fp32"
        else:
            sig[name] = "i32"
    return sig, constexprs


def _cuobjdump() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def resource_usage(cubin: bytes, name: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], check=True,
                              capture_output=True, text=True).stdout
    m = re.search(r"Function " + re.escape(name) + r":\s*\n\s*(.*)", text)
    if not m:
        raise RuntimeError(f"cuobjdump: no resource line for {name}:\n{text}")
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", m.group(1))}


def compile_kernel(spec: ScanSpec, cfg, kind: str, arch: int = 90) -> CompileReport:
    """Compiles one rendered kernel for sm_<arch>; raises on any compiler error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ssmgen.backends.triton_backend import kernel, kernel_name

    fn = kernel(spec, cfg, kind)
    sig, constexprs = _signature(spec, kind)
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    seconds = time.perf_counter() - t0
    name = kernel_name(spec, cfg, kind)
    use = resource_usage(compiled.asm["cubin"], name)
    return CompileReport(name=name, arch=arch, registers=use["REG"],
                         spill_bytes=use.get("LOCAL", 0) + use.get("STACK", 0),
                         shared_bytes=compiled.metadata.shared, seconds=seconds,
                         ptx_lines=compiled.asm["ptx"].count("\n"))
