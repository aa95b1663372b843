"""Every template variant (the selective scan's and the SSD's) compiles ahead of time for sm_80
and sm_90 on a machine without a GPU.

Runs `python -m ssmgen.aot` in a subprocess (Triton cannot compile and interpret in one process)
and prints its table of registers, spills and shared memory per kernel."""
import json
import os
import subprocess
import sys

from ssmgen.aot import (CompileReport, covering_specs, covering_ssd_specs, format_table,
                        ssd_jobs, ssd_kernel_name)
from ssmgen.backends.triton_backend import default_config, kernel_name


def test_every_variant_compiles_for_sm80_and_sm90(tmp_path, capsys):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "aot.json"
    proc = subprocess.run([sys.executable, "-m", "ssmgen.aot", "--arch", "80,90", "--json",
                           str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["errors"] == []
    reports = [CompileReport(**r) for r in data["reports"]]
    want = {(kernel_name(s, getattr(default_config(s), k), k), a)
            for s in covering_specs() for k in ("fwd", "bwd") for a in (80, 90)}
    want |= {(ssd_kernel_name(s, k, c), a) for s, k, c in ssd_jobs(covering_ssd_specs())
             for a in (80, 90)}
    assert {(r.name, r.arch) for r in reports} == want
    for r in reports:
        assert 0 < r.registers <= 255 and r.ptx_lines > 0, r
    with capsys.disabled():
        print("\n" + format_table(reports))


def test_ssd_compile_with_a_calls_specializations(tmp_path):
    """With a call's launch arguments (ssd_launch_args), the offline compile specializes as the JIT does
    (unit strides constant, 16-divisible sizes and pointers marked): the loads of the SSD kernels
    become vectors, and the register report is the one the GPU sees. Without them, the same
    kernels load element by element and report spills the JIT's build does not have."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import json\n"
        "from ssmgen import aot\n"
        "from ssmgen.spec import SSDSpec\n"
        "from ssmgen.backends import triton_ssd as ts\n"
        "spec = SSDSpec(128, 64, 'bfloat16', 'bfloat16', has_D=True, has_z=True)\n"
        "cfg = ts.walk_config(spec, 8, 64)\n"
        "args = aot.ssd_launch_args(spec, cfg, batch=8, seqlen=2048, heads=64, groups=1)\n"
        "out = {k: [aot.compile_ssd_kernel(spec, cfg, k).vector_loads,\n"
        "           aot.compile_ssd_kernel(spec, cfg, k, values=args[k]).vector_loads]\n"
        "       for k in ('fwdy', 'dwalk')}\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loads = json.loads(proc.stdout.strip().splitlines()[-1])
    for kind, (plain, jit) in loads.items():
        assert jit > plain == 0, (kind, plain, jit)
