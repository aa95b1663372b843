"""Generate bytes from a MambaLM trained by train_lm.py: prefill with the full forward, then one
decoding step per byte with the inference cache (the state update is ssmgen's decode-step
kernel on a GPU).

    python examples/generate.py runs/lm/model.pt --prompt "def " --n 200
    python examples/generate.py runs/lm/model.pt --cuda-graph --time   # GPU: graph vs eager
"""
import argparse
import sys
import time

import torch

from ssmgen.nn import MambaLM


def decode_rate(model, prompt, n, cuda_graph, seed, temperature):
    """Tokens per second of generate() (prefill included), after one untimed warm-up call."""
    def run():
        gen = torch.Generator(device=prompt.device).manual_seed(seed)
        return model.generate(prompt, n, temperature=temperature, generator=gen,
                              cuda_graph=cuda_graph)
    run()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = run()
    torch.cuda.synchronize()
    return out, prompt.shape[0] * n / (time.perf_counter() - t0)


def peer_model(model, t):
    """A copy of `model` whose mixers are mamba-ssm's Mamba (same state-dict keys and decoding
    cache layout), or None when mamba-ssm is not importable."""
    from ssmgen.bench import peer_import

    mod = peer_import("mamba_ssm.modules.mamba_simple")
    if mod is None:
        return None
    peer = MambaLM(256, t["d_model"], t["n_layer"], d_state=t["d_state"]).to(model.lm_head.weight)
    peer.load_state_dict(model.state_dict())
    for i, block in enumerate(peer.backbone.layers):
        m = mod.Mamba(t["d_model"], d_state=t["d_state"], layer_idx=i).to(block.mixer.D.device)
        m.load_state_dict(block.mixer.state_dict())
        block.mixer = m
    return peer.eval()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="import ")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch", type=int, default=1, help="samples decoded together")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cuda-graph", action="store_true", help="replay one captured step per token")
    p.add_argument("--time", action="store_true",
                   help="GPU: print decoding tokens/s, eager and with a CUDA graph")
    p.add_argument("--peer", action="store_true",
                   help="with --time: the same model with mamba-ssm's Mamba mixers, timed too")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    ck = torch.load(a.checkpoint, map_location=a.device)
    t = ck["args"]
    model = MambaLM(256, t["d_model"], t["n_layer"], d_state=t["d_state"]).to(a.device)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    prompt = torch.tensor([list(a.prompt.encode())] * a.batch, device=a.device)
    if a.time and prompt.device.type == "cuda":
        rates = {}
        for graph in (False, True):
            out, rates[graph] = decode_rate(model, prompt, a.n, graph, a.seed, a.temperature)
        print(f"decoding {a.n} tokens x batch {a.batch}: eager {rates[False]:,.0f} tokens/s, "
              f"CUDA graph {rates[True]:,.0f} tokens/s", file=sys.stderr)
        peer = peer_model(model, t) if a.peer else None
        if peer is not None:  # mamba-ssm's mixers on the same weights and cache layout
            for graph in (False, True):
                rates[graph] = decode_rate(peer, prompt, a.n, graph, a.seed, a.temperature)[1]
            print(f"  with mamba-ssm's Mamba mixers: eager {rates[False]:,.0f} tokens/s, "
                  f"CUDA graph {rates[True]:,.0f} tokens/s", file=sys.stderr)
    else:
        gen = torch.Generator(device=a.device).manual_seed(a.seed)
        out = model.generate(prompt, a.n, temperature=a.temperature, generator=gen,
                             cuda_graph=a.cuda_graph)
    text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
    print(text)
    return text


if __name__ == "__main__":
    main()
