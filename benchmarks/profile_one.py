"""One forward and one backward of a suite shape through a backend, for ncu:
ncu --clock-control none -k regex:ssmgen_cuda --section WarpStateStats ... python3 benchmarks/profile_one.py m1_130m_bf16 cuda"""
import sys

import torch

import ssmgen
from ssmgen.suite import make_inputs, scan_shapes

name, backend = sys.argv[1], sys.argv[2]
s = next(x for x in scan_shapes() if x["name"] == name)
x = [t.detach().requires_grad_(True) for t in make_inputs(s)]
out = ssmgen.selective_scan(*x, delta_softplus=True, backend=backend)
out.backward(torch.randn_like(out))
torch.cuda.synchronize()
