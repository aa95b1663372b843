"""Where an eager decoding step of MambaLM spends its time (GPU): torch.profiler over a few
steps, and the decode-step call alone. Usage: python benchmarks/decode_profile.py MODEL.pt"""
import sys
import time

import torch

from ssmgen.nn import InferenceParams, MambaLM
from ssmgen.step import selective_state_update


def main(path, batch=1, steps=30):
    ck = torch.load(path, map_location="cuda")
    t = ck["args"]
    lm = MambaLM(256, t["d_model"], t["n_layer"], d_state=t["d_state"]).cuda().eval()
    lm.load_state_dict(ck["state_dict"])
    ids = torch.randint(0, 256, (batch, 8), device="cuda")
    params = InferenceParams(max_seqlen=0, max_batch_size=batch)
    with torch.no_grad():
        lm(ids, params)

        def step(i):
            params.seqlen_offset = 8 + i
            return lm(ids[:, :1], params)
        for i in range(5):
            step(i)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
        print(f"eager model step: {(time.perf_counter() - t0) / steps * 1e6:.0f} us "
              f"({t['n_layer']} layers, batch {batch})")
        m = lm.backbone.layers[0].mixer
        conv, ssm = params.key_value_memory_dict[0]
        x = torch.randn(batch, m.d_inner, device="cuda")
        B = torch.randn(batch, m.d_state, device="cuda")
        A = -torch.exp(m.A_log.float())
        args = (ssm, x, x, A, B, B, m.D.float())
        kw = dict(z=x, dt_bias=m.dt_proj.bias.float(), dt_softplus=True)
        for _ in range(5):
            selective_state_update(*args, **kw)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            selective_state_update(*args, **kw)
        torch.cuda.synchronize()
        print(f"selective_state_update eager: {(time.perf_counter() - t0) / 200 * 1e6:.1f} us")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(10):
                step(i)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))


if __name__ == "__main__":
    main(sys.argv[1])
