"""Builds mamba-ssm's selective_scan_cuda (the peer) for the local GPU's architecture only.

Usage: python benchmarks/build_peer.py SDIST_DIR BUILD_DIR
SDIST_DIR is the extracted mamba-ssm sdist (fetch it on a machine with a package index:
`MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-build-isolation --no-binary :all:
mamba-ssm==2.3.2.post1`). The flags are the sdist's own (setup.py); about 3 minutes on 16 cores.
The peer's Python modules (its Triton step and SSD, its Mamba module), imported from the same
tree through ssmgen.bench.peer_import (SSMGEN_PEER_SRC), also need einops and packaging: on a
machine without a package index, bring their wheels (`pip download einops packaging --no-deps`).
"""
import glob
import os
import sys
import time

import torch
from torch.utils.cpp_extension import load


def build(sdist: str, build_dir: str):
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    src = os.path.join(sdist, "csrc", "selective_scan")
    sources = [os.path.join(src, "selective_scan.cpp")] + sorted(glob.glob(os.path.join(src, "*.cu")))
    os.makedirs(build_dir, exist_ok=True)
    t0 = time.time()
    mod = load(name="selective_scan_cuda", sources=sources, build_directory=build_dir,
               extra_include_paths=[src], extra_cflags=["-O3", "-std=c++17"],
               extra_cuda_cflags=["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__",
                                  "-U__CUDA_NO_HALF_CONVERSIONS__",
                                  "-U__CUDA_NO_BFLOAT16_OPERATORS__",
                                  "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                                  "-U__CUDA_NO_BFLOAT162_OPERATORS__",
                                  "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                                  "--expt-relaxed-constexpr", "--expt-extended-lambda",
                                  "--use_fast_math", "-lineinfo"],
               verbose=False)
    print(f"built selective_scan_cuda for sm_{major}{minor} in {time.time() - t0:.0f} s")
    return mod


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
