"""Ahead-of-time compilation of rendered Triton kernels for a GPU architecture, without a GPU.

Run it in a process without TRITON_INTERPRET=1: Triton decides at import time whether its own
library functions are interpreted, so one process cannot both interpret and compile.
`python -m ssmgen.aot` compiles the covering set of variants and prints the resource table.

`compile_kernel` runs Triton's full pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the
ptxas Triton ships) for GPUTarget("cuda", cc, 32), and reads registers, spills and shared memory
from the cubin with the cuobjdump Triton ships. Tests use it to prove every template variant
compiles for sm_80 and sm_90 on a CPU-only machine.
"""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .spec import ScanSpec

@dataclass
class CompileReport:
    name: str
    arch: int
    registers: int
    spill_bytes: int  # local memory per thread (stack frame + spills)
    shared_bytes: int
    seconds: float
    ptx_lines: int
    vector_loads: int = 0  # ld.global of 2 or 4 elements in the PTX


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


def _compile(fn, params, name: str, num_warps: int, num_stages: int, arch: int,
             values=None, **options) -> CompileReport:
    """values: {int parameter: its value} of a real call, to compile as the JIT would for it
    (an int equal to 1 becomes a constant, one divisible by 16 and every pointer carry that
    divisibility); None compiles without those specializations (pessimistic: scalar loads)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("ahead-of-time compilation needs a process without TRITON_INTERPRET=1 "
                           "(run `python -m ssmgen.aot` in a subprocess)")
    sig = dict(params)
    constexprs = {n: True for n, t in params if t == "constexpr"}  # uniform groups, checkpoints
    attrs = {}
    if values is not None:
        for i, (n, t) in enumerate(params):
            v = values.get(n)
            if t.startswith("*") or (t == "i32" and isinstance(v, int) and v % 16 == 0):
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif t == "i32" and v == 1:
                sig[n] = "constexpr"
                constexprs[n] = 1
    t0 = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages, **options})
    seconds = time.perf_counter() - t0
    use = resource_usage(compiled.asm["cubin"], name)
    return CompileReport(name=name, arch=arch, registers=use["REG"],
                         spill_bytes=use.get("LOCAL", 0) + use.get("STACK", 0),
                         shared_bytes=compiled.metadata.shared, seconds=seconds,
                         ptx_lines=compiled.asm["ptx"].count("\n"),
                         vector_loads=len(re.findall(r"ld\.global[.a-z0-9:]*\.v[24]\.",
                                                     compiled.asm["ptx"])))


def compile_kernel(spec: ScanSpec, cfg, kind: str, arch: int = 90) -> CompileReport:
    """Compiles one rendered kernel for sm_<arch>; raises on any compiler error."""
    from ssmgen.backends.triton_backend import kernel, kernel_name, kernel_params

    return _compile(kernel(spec, cfg, kind), kernel_params(spec, kind),
                    kernel_name(spec, cfg, kind), cfg.num_warps, cfg.num_stages, arch)


def compile_ssd_kernel(spec, cfg, kind: str, arch: int = 90, values=None) -> CompileReport:
    """The same for one SSD kernel (backends/triton_ssd.py; kind: one of SSD_KINDS); values:
    see _compile (ssd_launch_args gives them for a call's sizes)."""
    mod = _ssd_module(kind)
    lc = mod.launch_config(cfg, kind)
    return _compile(mod.kernel(spec, cfg, kind), mod.kernel_params(spec, kind),
                    mod.kernel_name(spec, cfg, kind), arch=arch, values=values, **lc)


def _ssd_module(kind: str):
    """The backend module of an SSD kernel kind: the chunk form's (cfg: an SSDChunkConfig) or
    the walk's."""
    from ssmgen.backends import triton_ssd, triton_ssd_chunk

    return triton_ssd_chunk if kind in triton_ssd_chunk.KINDS else triton_ssd


def ssd_launch_args(spec, cfg, batch: int, seqlen: int, heads: int, groups: int) -> dict:
    """{kind: the arguments of its launch} for a call of the variant spec at these sizes on
    contiguous tensors: the forward (with what the backward reads) and the backward run on
    meta tensors with their launches recorded, not run, so the sizes, strides and block
    counts are the launcher's own (backends/triton_ssd.py), derived nowhere else."""
    import torch

    from .backends import triton_ssd as ts
    from .ssd import _normalize
    from .ssd_kernels import spec_of

    b, L, H, G, P, N = batch, seqlen, heads, groups, spec.headdim, spec.d_state
    f32, io = torch.float32, getattr(torch, spec.dtype)

    def meta(*shape, dtype=io):
        return torch.empty(shape, dtype=dtype, device="meta")

    c = _normalize(meta(b, L, H, P), meta(b, L, H, dtype=getattr(torch, spec.dt_dtype)),
                   meta(H, dtype=f32), meta(b, L, G, N), meta(b, L, G, N), None,
                   D=(meta(H, P, dtype=f32) if spec.D_per_channel else meta(H, dtype=f32))
                   if spec.has_D else None,
                   z=meta(b, L, H, P) if spec.has_z else None,
                   dt_bias=meta(H, dtype=f32) if spec.has_dt_bias else None,
                   initial_states=meta(b, H, P, N, dtype=f32) if spec.has_initial_state
                   else None,
                   seq_idx=meta(b, L, dtype=torch.int32) if spec.has_seq_idx else None,
                   dt_softplus=spec.dt_softplus,
                   return_final_states=spec.return_final_states, check_values=False)
    assert spec_of(c) == spec, (spec_of(c), spec)  # the IR is the one description of the call
    seen, real = {}, ts._launch
    ts._launch = lambda spec_, cfg_, kind, a, grid: seen.setdefault(kind, dict(a))
    try:
        _, _, ckpt, saved = ts.forward(c, spec, cfg, for_backward=True)
        ts.backward(c, spec, cfg, ckpt, meta(b, L, H, P), saved=saved)
    finally:
        ts._launch = real
    return seen


def covering_specs() -> list:
    """Specs that together take every branch of the templates: each option and variant on and
    off, every B/C layout pair, real and complex A, every dtype, d_state from 1 to the maximum
    (and a d_state that is no power of two)."""
    rows = [
        # d_state, dtype, complex, B, C, D, z, bias, softplus, last, initial state, reverse,
        # varlen, deterministic
        (16, "bfloat16", False, "variable", "variable", 1, 1, 1, 1, 1, 1, 0, 0, 0),
        (16, "float32", False, "constant", "constant", 0, 0, 0, 0, 0, 0, 1, 0, 0),
        (1, "float16", False, "variable", "constant", 1, 0, 1, 0, 1, 0, 0, 1, 1),
        (5, "float32", False, "constant", "variable", 0, 1, 0, 1, 0, 1, 1, 0, 0),
        (64, "bfloat16", False, "variable", "variable", 1, 1, 0, 1, 0, 0, 1, 1, 1),
        (256, "float16", False, "variable", "variable", 0, 0, 1, 0, 1, 0, 0, 0, 0),
        (16, "float32", True, "variable", "variable", 1, 1, 1, 1, 1, 0, 1, 1, 1),
        (16, "bfloat16", True, "constant", "variable", 0, 1, 0, 0, 1, 1, 0, 0, 0),
        (3, "float16", True, "variable", "constant", 1, 0, 1, 1, 0, 1, 1, 0, 0),
        (128, "float32", True, "constant", "constant", 0, 0, 0, 0, 1, 0, 0, 1, 0),
        (512, "bfloat16", False, "variable", "variable", 1, 1, 1, 1, 1, 1, 0, 0, 0),
        (300, "float32", True, "variable", "variable", 0, 0, 0, 1, 1, 0, 1, 0, 1),
        # packed sequences from per-sequence initial states
        (16, "bfloat16", False, "variable", "variable", 1, 1, 1, 1, 1, 1, 1, 1, 0),
        (16, "float32", True, "variable", "constant", 0, 0, 0, 0, 0, 1, 0, 1, 1),
        (300, "float32", True, "variable", "variable", 0, 0, 0, 1, 1, 1, 1, 1, 1),
    ]
    names = ("d_state", "dtype", "complex_A", "B_layout", "C_layout", "has_D", "has_z",
             "has_delta_bias", "delta_softplus", "return_last_state", "has_initial_state",
             "reverse", "varlen", "deterministic")
    rows = [r[:5] + tuple(bool(x) for x in r[5:]) for r in rows]
    return [ScanSpec(**dict(zip(names, r))) for r in rows]


def covering_ssd_specs() -> list:
    """SSD variants that together set every SSDSpec flag both ways, each dtype, a d_state
    that is not a power of two and one past 128; packed sequences (seq_idx) at Mamba-2's
    sizes with every option on."""
    from .spec import SSDSpec

    return [
        SSDSpec(128, 64, "bfloat16", "bfloat16", has_D=True, has_z=True, has_dt_bias=True,
                dt_softplus=True),
        SSDSpec(128, 64, "bfloat16", "float32", has_D=True, has_z=True, has_dt_bias=True,
                dt_softplus=True, has_initial_state=True, return_final_states=True,
                has_seq_idx=True),
        SSDSpec(20, 48, "float16", "float32", has_D=True, D_per_channel=True,
                has_initial_state=True, return_final_states=True),
        SSDSpec(256, 32, "float32", "float32", has_z=True, dt_softplus=True,
                return_final_states=True),
        SSDSpec(16, 8, "bfloat16", "float32"),
    ]


def ssd_default_config(spec, kind: str = "fwd"):
    """The config a covering compile uses for an SSD kind: the chunk form's default for its
    kinds, the walk's otherwise."""
    from .backends.triton_ssd import walk_config
    from .backends.triton_ssd_chunk import KINDS, SSDChunkConfig

    return SSDChunkConfig() if kind in KINDS else walk_config(spec)


def ssd_configs(spec, kind: str) -> list:
    """The configs a covering compile takes for an SSD kind: its default, and for the chunk
    kinds whose templates branch on them a second one with the other branches (two tiles per
    chunk, dy and dz from the walk, d cum's state part in cdbc, two heads per program, heads
    first in the grid; cout's and cdx's registers capped, so the cap reaches ptxas), and for
    cdx a third forming y before the gate again (yp_recompute: one tile a chunk only); for the
    walks a second one over blocks of d_state (walk_block_n)."""
    from .backends.triton_ssd_chunk import SSDChunkConfig

    out = [ssd_default_config(spec, kind)]
    if kind in ("cout", "couty", "cdst", "cdx", "cdbc"):
        out.append(SSDChunkConfig(tiles=2, dy_walk=1, cout_heads=2, cdx_heads=2, heads_inner=1,
                                  cout_regs=128, cdx_regs=168, dz_walk=1, v_cdbc=1))
    if kind == "cdx":
        out.append(SSDChunkConfig(yp_recompute=1, cdx_heads=2))
    if kind in ("cst", "cstp", "cdst", "cdstp"):
        out.append(SSDChunkConfig(walk_block_n=32))
    return out


def ssd_kernel_name(spec, kind: str, cfg=None) -> str:
    cfg = ssd_default_config(spec, kind) if cfg is None else cfg
    return _ssd_module(kind).kernel_name(spec, cfg, kind)


def ssd_jobs(ssd_specs) -> list:
    """(spec, kind, config) of a covering SSD compile: every walk kind for every spec, every
    chunk-form kind for the specs it takes (no packed sequences), under ssd_configs."""
    from .backends.triton_ssd_chunk import KINDS

    return [(s, k, c) for s in ssd_specs for k in SSD_KINDS + KINDS
            if not (k in KINDS and s.has_seq_idx) for c in ssd_configs(s, k)]


def _job(args):
    family, spec_json, kind, arch, cfg_text = args
    try:
        if family == "ssd":
            from .spec import SSDSpec
            from .ssd_kernels import decode_config

            spec = SSDSpec.from_json(spec_json)
            report = compile_ssd_kernel(spec, decode_config(cfg_text), kind, arch)
        else:
            from ssmgen.backends.triton_backend import default_config

            spec = ScanSpec.from_json(spec_json)
            report = compile_kernel(spec, getattr(default_config(spec), kind), kind, arch)
        return dataclasses.asdict(report), None
    except Exception as e:  # reported per kernel; the caller decides what fails
        return {"name": f"{family} {kind} {spec_json} sm_{arch}"}, f"{type(e).__name__}: {e}"


SSD_KINDS = ("fwd", "fwdy", "fwdo", "dstate", "dstatey", "bwd", "bwdx", "dbc", "dwalk", "dfin",
             "fsplit", "bsplit")


def compile_all(specs, archs=(80, 90), kinds=("fwd", "bwd"), jobs=None, ssd_specs=()):
    """Compiles every (spec, kind, arch) with the default config in a process pool, and
    every SSD spec's three kernels. Returns (reports, errors)."""
    from concurrent.futures import ProcessPoolExecutor

    work = [("scan", s.to_json(), k, a, None) for s in specs for k in kinds for a in archs]
    work += [("ssd", s.to_json(), k, a, c.encode()) for s, k, c in ssd_jobs(ssd_specs)
             for a in archs]
    jobs = jobs or min(len(work), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(_job, work))
    reports = [CompileReport(**r) for r, err in results if err is None]
    errors = [(r["name"], err) for r, err in results if err is not None]
    return reports, errors


def format_table(reports) -> str:
    lines = [f"| kernel | sm | regs | spill B | smem B | compile s |", "|---|---|---|---|---|---|"]
    for r in sorted(reports, key=lambda r: (r.name, r.arch)):
        lines.append(f"| {r.name} | {r.arch} | {r.registers} | {r.spill_bytes} | "
                     f"{r.shared_bytes} | {r.seconds:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m ssmgen.aot",
                                description="Compile every template variant for sm_80/sm_90.")
    p.add_argument("--arch", default="80,90", help="comma-separated compute capabilities")
    p.add_argument("--json", help="write the reports to this file")
    p.add_argument("--jobs", type=int, default=None)
    a = p.parse_args(argv)
    archs = tuple(int(x) for x in a.arch.split(","))
    reports, errors = compile_all(covering_specs(), archs, jobs=a.jobs,
                                  ssd_specs=covering_ssd_specs())
    print(format_table(reports))
    for name, err in errors:
        print(f"FAILED {name}: {err}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"reports": [dataclasses.asdict(r) for r in reports], "errors": errors}, f,
                      indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
