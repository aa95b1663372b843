"""Every kernel source the CUDA scan records of a cache file run (fwd / fsplit / bwd / bsplit,
element and vector variants), rendered by this tree: {kernel name: source} as JSON. Two trees'
files say which records a template change touched; `sass_hashes` then compiles both for sm_90
and compares the SASS (what decides whether a record can be restamped instead of re-tuned).
Run as: python benchmarks/record_sources.py [CACHE.json] > sources.json
        python benchmarks/record_sources.py --sass sources.json > sass.json"""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from ssmgen.backends import cuda_backend as cb
from ssmgen.backends import cuda_runtime as cr
from ssmgen.spec import ScanSpec

ROOT = Path(__file__).resolve().parents[1]


def sources(cache: Path) -> dict:
    out = {}
    for r in json.loads(cache.read_text())["records"]:
        if r["backend"] != "cuda":
            continue
        spec = ScanSpec.from_json(r["spec"]).replace(chunk_len=r["config"]["chunk_len"])
        for main in ("fwd", "bwd"):
            k = cb.KernelConfig(**r["config"][main])
            for kind in cb.kinds_of(k, main):
                for vec in cb.variants(spec, k, kind):
                    out[cb.kernel_name(spec, k, kind, vec)] = cb.render_source(spec, k, kind, vec)
    return out


def sass_hashes(src: dict) -> dict:
    """SASS of each source for sm_90, addresses and encodings stripped, hashed."""
    import triton
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    out = {}
    for name, s in src.items():
        text = subprocess.run([str(cuobjdump), "-sass", str(cr.compile_cubin(name, s, 90))],
                              capture_output=True, text=True, check=True).stdout
        lines = [re.sub(r"/\*[0-9a-f]+\*/", "", ln).split(";")[0].strip()
                 for ln in text.splitlines() if re.match(r"\s+/\*[0-9a-f]{4}\*/", ln)]
        out[name] = hashlib.sha1("\n".join(lines).encode()).hexdigest()[:12]
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--sass"]:
        json.dump(sass_hashes(json.load(open(sys.argv[2]))), sys.stdout, indent=1, sort_keys=True)
    else:
        cache = Path(sys.argv[1]) if sys.argv[1:] else ROOT / "autotune_cache/nvidia_h100_80gb_hbm3.json"
        json.dump(sources(cache), sys.stdout, indent=1, sort_keys=True)
