"""Rendering: StrictUndefined, names that encode variant and config, and a module cache that
concurrent processes share safely."""
import os
import subprocess
import sys

import jinja2
import pytest

from ssmgen import ScanSpec, render
from ssmgen.backends.triton_backend import KernelConfig, context, kernel_name, render_source


def test_missing_template_variable_is_an_error():
    spec = ScanSpec(d_state=4)
    ctx = context(spec, KernelConfig(), "fwd")
    del ctx["has_z"]
    with pytest.raises(jinja2.UndefinedError):
        render.render("triton/fwd.py.jinja", **ctx)


def test_kernel_name_encodes_variant_and_config():
    s = ScanSpec(d_state=16, dtype="bfloat16", has_D=True, has_z=True, delta_softplus=True,
                 chunk_len=128)
    k = KernelConfig(block_d=2, block_l=64, num_warps=2)
    name = kernel_name(s, k, "bwd")
    assert name == "ssmgen_bwd_n16_bf16_real_Bv_Cv_D_z_sp_c128__d2_l64_w2_s1"
    assert f"def {name}(" in render_source(s, k, "bwd")


def test_every_option_changes_the_rendered_source():
    base = ScanSpec(d_state=8)
    k = KernelConfig()
    seen = {render_source(base, k, "bwd")}
    for change in [dict(complex_A=True), dict(B_layout="constant"), dict(C_layout="constant"),
                   dict(has_D=True), dict(has_z=True), dict(has_delta_bias=True),
                   dict(delta_softplus=True), dict(d_state=9), dict(chunk_len=64)]:
        src = render_source(base.replace(**change), k, "bwd")
        assert src not in seen, change
        seen.add(src)


def test_concurrent_processes_render_the_same_module(tmp_path):
    code = ("import ssmgen\n"
            "from ssmgen.backends.triton_backend import kernel, default_config\n"
            "s = ssmgen.ScanSpec(d_state=5, dtype='float16', has_z=True)\n"
            "fn = kernel(s, default_config(s).fwd, 'fwd')\n"
            "print(fn.__module__)\n")
    env = dict(os.environ, SSMGEN_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert len({o for o, _ in outs}) == 1
    files = [f for f in os.listdir(tmp_path / "triton")]
    assert len(files) == 1 and files[0].endswith(".py"), files  # no temp files left behind
