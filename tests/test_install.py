"""A non-editable install finds its templates and shipped cache from any working directory."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_renders_from_elsewhere(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    code = (
        "import ssmgen, sys\n"
        "from ssmgen.backends.triton_backend import render_source, default_config\n"
        "import importlib.resources as r\n"
        "s = ssmgen.ScanSpec(d_state=16, dtype='bfloat16', has_z=True)\n"
        "src = render_source(s, default_config(s).fwd, 'fwd')\n"
        "assert 'def ssmgen_fwd_n16_bf16' in src\n"
        "print(ssmgen.__file__)\n"
        "print(sorted(p.name for p in r.files('ssmgen.templates').joinpath('triton').iterdir()))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(target), SSMGEN_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith(str(target)), first  # the installed copy, not the checkout
    assert "fwd.py.jinja" in second and "bwd.py.jinja" in second
