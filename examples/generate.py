"""Generate bytes from a MambaLM trained by train_lm.py: prefill with the full forward, then one
decoding step per byte with the inference cache.

    python examples/generate.py runs/lm/model.pt --prompt "def " --n 200
"""
import argparse

import torch

from ssmgen.nn import MambaLM


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="import ")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    ck = torch.load(a.checkpoint, map_location=a.device)
    t = ck["args"]
    model = MambaLM(256, t["d_model"], t["n_layer"], d_state=t["d_state"]).to(a.device)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    prompt = torch.tensor([list(a.prompt.encode())], device=a.device)
    gen = torch.Generator(device=a.device).manual_seed(a.seed)
    out = model.generate(prompt, a.n, temperature=a.temperature, generator=gen)
    text = bytes(out[0].tolist()).decode("utf-8", errors="replace")
    print(text)
    return text


if __name__ == "__main__":
    main()
