"""One CUDA backward of a suite shape at its shipped record's backward config, for ncu:
python3 benchmarks/profile_bwd.py SHAPE [elem]  (elem: force element loads)."""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bwd_ab import record_config  # noqa: E402
from ssmgen.backends import cuda_backend as cb  # noqa: E402
from ssmgen.inputs import normalize  # noqa: E402
from ssmgen.suite import make_inputs, scan_shapes  # noqa: E402

shape = next(s for s in scan_shapes() if s["name"] == sys.argv[1])
if len(sys.argv) > 2 and sys.argv[2] == "elem":
    cb.vector_ok = lambda *a: False
x = make_inputs(shape)
chunk, cfg = record_config(normalize(*x, delta_softplus=True))
call = normalize(*x, delta_softplus=True, chunk_len=chunk)
_, _, ckpt = cb.forward(call, cfg, True)
cb.backward(call, cfg, ckpt, torch.randn_like(call.u))
torch.cuda.synchronize()
