"""GPU: forward+backward of both backends where batch x dim is small (few rows to spread over
the SMs), to place the default-backend boundary. Tuned records do not cover these shapes, so
both backends run their defaults. Usage: python benchmarks/small_rows.py OUT.json"""
import json
import sys

import torch
from triton.testing import do_bench

import ssmgen


def case(b, d, L, N=16):
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    x = [r(b, d, L).bfloat16(), (0.1 * torch.rand(b, d, L, device="cuda", generator=g)).bfloat16(),
         -torch.rand(d, N, device="cuda", generator=g), r(b, 1, N, L).bfloat16(),
         r(b, 1, N, L).bfloat16(), r(d), r(b, d, L).bfloat16(), 0.1 * r(d).abs()]
    leaves = [t.requires_grad_() for t in x]
    dout = torch.randn_like(x[0])
    row = {"batch": b, "dim": d, "L": L, "rows": b * d}
    for be in ("cuda", "triton"):
        def fwd():
            return ssmgen.selective_scan(*leaves[:5], D=leaves[5], z=leaves[6],
                                         delta_bias=leaves[7], delta_softplus=True, backend=be)

        def fb():
            torch.autograd.grad(fwd(), leaves, dout)
        fb()
        with torch.no_grad():
            row[f"{be}_fwd_ms"] = do_bench(fwd, warmup=3, rep=20, return_mode="median")
        row[f"{be}_fwdbwd_ms"] = do_bench(fb, warmup=3, rep=20, return_mode="median")
    row["triton_over_cuda_fwdbwd"] = row["triton_fwdbwd_ms"] / row["cuda_fwdbwd_ms"]
    print(row, flush=True)
    return row


def main(out):
    rows = [case(b, d, L) for b, d, L in ((1, 256, 65536), (1, 1024, 65536), (1, 2048, 65536),
                                         (1, 4096, 32768), (2, 2048, 32768), (4, 1536, 16384),
                                         (8, 768, 8192))]
    json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
