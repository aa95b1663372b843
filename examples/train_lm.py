"""Train a byte-level MambaLM on the Python standard library's own source files.

    python examples/train_lm.py --steps 300 --out runs/lm            # GPU: ssmgen's Triton scan
    python examples/train_lm.py --steps 10 --scan reference --device cpu --out runs/cpu

The corpus is on every machine with Python: the .py files of the standard library, read in
sorted order, concatenated as bytes; the last 5% is held out. Writes the loss curve (PNG), a
JSON log and the model under --out. --compare adds a second run with another scan path (same
seed, same batches) to the same plot, e.g. `--compare reference` to check that ssmgen's kernels
train like the float64 reference; --peer also times mamba-ssm's own Mamba module when it is
importable.
"""
import argparse
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ssmgen.nn import MambaLM


def corpus(max_bytes: int) -> torch.Tensor:
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for f in sorted(root.rglob("*.py")):
        if "site-packages" in f.parts:
            continue
        try:
            b = f.read_bytes()
        except OSError:
            continue
        chunks.append(b)
        total += len(b)
        if total >= max_bytes:
            break
    data = b"".join(chunks)[:max_bytes]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def batches(data, batch, seq_len, gen):
    while True:
        idx = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        yield torch.stack([data[i:i + seq_len + 1] for i in idx])


def evaluate(model, held, seq_len, device, n_batches=4, batch=8):
    gen = torch.Generator().manual_seed(1234)  # the same held-out windows every time
    it = batches(held, batch, seq_len, gen)
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x[:, :-1].to(device)).flatten(0, 1).float(),
                                  x[:, 1:].to(device).flatten()).item()
                  for x in (next(it) for _ in range(n_batches))]
    model.train()
    return sum(losses) / len(losses)


def cast(model, dtype: str):
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
        for m in model.modules():  # keep the SSM parameters in fp32, as mamba-ssm does
            if hasattr(m, "A_log"):
                m.A_log.data, m.D.data = m.A_log.data.float(), m.D.data.float()
    return model


def train(args, scan, train_data, held, device, label):
    torch.manual_seed(args.seed)
    model = MambaLM(256, args.d_model, args.n_layer, d_state=args.d_state,
                    scan_backend=None if scan == "auto" else scan).to(device)
    model = cast(model, args.dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    it = batches(train_data, args.batch, args.seq_len, gen)
    log = {"label": label, "scan": scan, "step": [], "loss": [], "eval_step": [], "eval_loss": []}
    t_train, tokens = 0.0, 0
    for step in range(1, args.steps + 1):
        x = next(it).to(device)
        lr = args.lr * min(1.0, step / 20) * (0.5 + 0.5 * math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 3:  # the first steps compile kernels
            t_train += time.perf_counter() - t0
            tokens += x[:, :-1].numel()
        log["step"].append(step)
        log["loss"].append(loss.item())
        if step % args.eval_every == 0 or step == args.steps:
            log["eval_step"].append(step)
            log["eval_loss"].append(evaluate(model, held, args.seq_len, device))
        tps = tokens / t_train if t_train else 0.0
        bar = "#" * int(30 * step / args.steps)
        sys.stderr.write(f"\r{label:>10} [{bar:<30}] {step}/{args.steps} loss {loss.item():.3f} "
                         f"held-out {log['eval_loss'][-1] if log['eval_loss'] else float('nan'):.3f}"
                         f" {tps:,.0f} tok/s")
    sys.stderr.write("\n")
    log["tokens_per_s"] = tokens / t_train if t_train else None
    return model, log


def peer_tokens_per_s(args, train_data, device):
    """mamba-ssm's own Mamba module in the same LM layout, timed the same way (if importable)."""
    from ssmgen.bench import peer_import

    mod = peer_import("mamba_ssm.modules.mamba_simple")  # installed, or SSMGEN_PEER_SRC's tree
    if mod is None:
        return None, "mamba-ssm not importable"
    PeerMamba = mod.Mamba
    torch.manual_seed(args.seed)
    model = MambaLM(256, args.d_model, args.n_layer, d_state=args.d_state).to(device)
    for i, block in enumerate(model.backbone.layers):
        peer = PeerMamba(args.d_model, d_state=args.d_state, layer_idx=i).to(device)
        peer.load_state_dict(block.mixer.state_dict())  # same keys: strict load both ways
        block.mixer = peer
    model = cast(model, args.dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    it = batches(train_data, args.batch, args.seq_len, torch.Generator().manual_seed(args.seed))
    t, tokens = 0.0, 0
    for step in range(min(args.steps, 50)):
        x = next(it).to(device)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as the ssmgen runs do
        opt.step()
        torch.cuda.synchronize()
        if step >= 3:
            t += time.perf_counter() - t0
            tokens += x[:, :-1].numel()
    fast = getattr(mod, "causal_conv1d_fn", None) is not None
    return tokens / t, ("mamba-ssm Mamba, " + ("fused mamba_inner_fn path" if fast else
                        "selective_scan_fn with the conv in PyTorch (causal-conv1d absent)"))


def plot(logs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for lg in logs:
        ax.plot(lg["step"], lg["loss"], alpha=0.35, label=f"{lg['label']} train")
        ax.plot(lg["eval_step"], lg["eval_loss"], marker="o", label=f"{lg['label']} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/byte)")
    ax.set_title("byte-level MambaLM on the Python standard library")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--scan", default="auto", choices=["auto", "cuda", "triton", "reference"])
    p.add_argument("--compare", default=None, choices=["cuda", "triton", "reference"],
                   help="a second run with this scan path, plotted beside the first")
    p.add_argument("--peer", action="store_true", help="time mamba-ssm's Mamba too (GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-bytes", type=int, default=8_000_000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/lm")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    data = corpus(a.max_bytes)
    cut = int(len(data) * 0.95)
    train_data, held = data[:cut], data[cut:]
    print(f"corpus: {len(data):,} bytes of the standard library ({len(held):,} held out)")
    os.makedirs(a.out, exist_ok=True)
    model, log = train(a, a.scan, train_data, held, device, f"ssmgen-{a.scan}")
    logs = [log]
    if a.compare:
        logs.append(train(a, a.compare, train_data, held, device, f"ssmgen-{a.compare}")[1])
    result = {"args": vars(a), "runs": logs}
    if a.peer and device.type == "cuda":
        result["peer_tokens_per_s"], result["peer"] = peer_tokens_per_s(a, train_data, device)
    plot(logs, os.path.join(a.out, "loss.png"))
    json.dump(result, open(os.path.join(a.out, "log.json"), "w"), indent=1)
    torch.save({"args": vars(a), "state_dict": model.state_dict()}, os.path.join(a.out, "model.pt"))
    for lg in logs:
        print(f"{lg['label']}: train loss {lg['loss'][0]:.3f} -> {lg['loss'][-1]:.3f}, held-out "
              f"{lg['eval_loss'][-1]:.3f}, {lg['tokens_per_s'] or 0:,.0f} tokens/s")
    if result.get("peer_tokens_per_s"):
        print(f"{result['peer']}: {result['peer_tokens_per_s']:,.0f} tokens/s")
    print(f"wrote {a.out}/loss.png, log.json, model.pt")
    return result


if __name__ == "__main__":
    main()
