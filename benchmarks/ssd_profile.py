"""GPU: one forward+backward of the SSD kernels (Triton, or CUDA with a third argument "cuda") on
a suite shape, for ncu.

Runs twice (compile, warm), then once more; profile the third with
  ncu --clock-control none -k regex:ssmgen_ssd --launch-skip 3 --launch-count 3 \
      python3 benchmarks/ssd_profile.py ssd_1.3b_bf16 '{"block_q": 32}'
"""
import json
import sys

import torch

import ssmgen
from ssmgen.suite import load

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_bench import make_inputs  # noqa: E402

s = next(x for x in load()["ssd"] if x["name"] == sys.argv[1])
cfg = json.loads(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] else None
backend = sys.argv[3] if len(sys.argv) > 3 else "triton"
x = {k: v.requires_grad_(True) for k, v in make_inputs(s).items()}
dout = torch.randn_like(x["x"])
for _ in range(3):
    out = ssmgen.mamba_chunk_scan_combined(chunk_size=s["chunk"], dt_softplus=True,
                                           backend=backend, config=cfg, **x)
    torch.autograd.grad(out, list(x.values()), dout)
torch.cuda.synchronize()
