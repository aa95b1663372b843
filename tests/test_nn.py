"""The Mamba mixer and MambaLM: mamba-ssm's state-dict layout, Triton scan vs the reference
path, decoding step vs the full forward, torch.compile without graph breaks, DDP gradients."""
import os
import socket
import subprocess
import sys

import pytest
import torch

from ssmgen.nn import InferenceParams, Mamba, MambaLM

# mamba-ssm 2.3.2 Mamba(d_model=16, d_state=16, d_conv=4, expand=2): its parameter names and
# shapes (mamba_ssm/modules/mamba_simple.py), which a checkpoint carries.
MAMBA_SSM_KEYS = {
    "A_log": (32, 16), "D": (32,), "in_proj.weight": (64, 16), "conv1d.weight": (32, 1, 4),
    "conv1d.bias": (32,), "x_proj.weight": (33, 32), "dt_proj.weight": (32, 1),
    "dt_proj.bias": (32,), "out_proj.weight": (16, 32),
}
CFG = {"chunk_len": 16, "block_l": 8}


def test_state_dict_matches_mamba_ssm_and_loads_strictly():
    m = Mamba(16)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == MAMBA_SSM_KEYS
    g = torch.Generator().manual_seed(0)
    ckpt = {k: torch.randn(s, generator=g) for k, s in MAMBA_SSM_KEYS.items()}
    m.load_state_dict(ckpt, strict=True)
    assert torch.equal(m.A_log, ckpt["A_log"])


def test_init_follows_mamba_ssm():
    torch.manual_seed(0)
    m = Mamba(32, dt_min=0.001, dt_max=0.1)
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert (dt >= 0.001 * 0.999).all() and (dt <= 0.1 * 1.001).all()
    assert torch.equal(m.A_log[0], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(m.D, torch.ones(64))
    assert m.dt_rank == 2


def test_lm_state_dict_layout_and_tied_head():
    lm = MambaLM(vocab_size=256, d_model=16, n_layer=2)
    keys = set(lm.state_dict())
    assert {"backbone.embedding.weight", "backbone.norm_f.weight", "lm_head.weight",
            "backbone.layers.1.norm.weight", "backbone.layers.1.mixer.A_log"} <= keys
    assert lm.lm_head.weight is lm.backbone.embedding.weight


@pytest.mark.interp
def test_triton_scan_matches_the_reference_path_with_gradients():
    torch.manual_seed(0)
    a = MambaLM(vocab_size=64, d_model=16, n_layer=2, scan_backend="triton", scan_config=CFG)
    b = MambaLM(vocab_size=64, d_model=16, n_layer=2, scan_backend="reference")
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 64, (2, 40))
    la, lb = a(ids), b(ids)
    assert (la - lb).abs().max() / lb.abs().max() < 1e-4
    la.square().mean().backward()
    lb.square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        err = (pa.grad - pb.grad).norm() / pb.grad.norm().clamp_min(1e-6)
        assert err < 1e-3, (n, err.item())


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.interp)])
def test_step_matches_the_full_forward(backend):
    """Decoding token by token (the step kernel on the fp32 state) gives the full forward."""
    torch.manual_seed(0)
    cfg = CFG if backend == "triton" else None
    lm = MambaLM(vocab_size=64, d_model=16, n_layer=2, scan_backend=backend,
                 scan_config=cfg).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        full = lm(ids)
        params = InferenceParams(max_seqlen=12, max_batch_size=2)
        prefix = lm(ids[:, :5], params)  # prefill fills the cache
        steps = [prefix]
        for t in range(5, 12):
            params.seqlen_offset = t
            steps.append(lm(ids[:, t:t + 1], params))
    dec = torch.cat(steps, dim=1)
    assert torch.isfinite(dec).all()
    assert (dec - full).abs().max() / full.abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_cuda_graph_decoding_matches_eager_decoding(backend):
    """generate(cuda_graph=True) replays one captured step per token: same tokens as eager
    decoding with the same sampling generator, and the cache the capture used is not advanced
    by the warm-up runs."""
    torch.manual_seed(0)
    lm = MambaLM(vocab_size=64, d_model=32, n_layer=2, scan_backend=backend).cuda().eval()
    prompt = torch.randint(0, 64, (3, 7), device="cuda")
    outs = []
    for graph in (False, True):
        gen = torch.Generator(device="cuda").manual_seed(1)
        outs.append(lm.generate(prompt, 20, temperature=0.5, generator=gen, cuda_graph=graph))
    assert torch.equal(outs[0], outs[1])
    with torch.no_grad():  # the decoded tokens' logits equal a full forward's
        full = lm(outs[1][:, :-1])[:, -1]
        params = InferenceParams(max_seqlen=27, max_batch_size=3)
        lm(outs[1][:, :7], params)
        step = lm._graph_step(params, 3)
        for t in range(7, 26):
            params.seqlen_offset = t
            last = step(outs[1][:, t:t + 1])
    assert (last - full).abs().max() / full.abs().max() < 1e-4


@pytest.mark.interp
def test_compile_fullgraph_forward_and_backward():
    torch.manual_seed(0)
    lm = MambaLM(vocab_size=32, d_model=16, n_layer=1, scan_backend="triton", scan_config=CFG)
    ids = torch.randint(0, 32, (1, 24))
    ref = lm(ids)
    ref.sum().backward()
    gref = [p.grad.clone() for p in lm.parameters()]
    lm.zero_grad()
    compiled = torch.compile(lm, fullgraph=True, backend="aot_eager")
    out = compiled(ids)
    out.sum().backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    for g, p in zip(gref, lm.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6)


DDP_WORKER = """
import os, sys, torch, torch.distributed as dist
from ssmgen.nn import MambaLM
rank, world, path = int(sys.argv[1]), 2, sys.argv[2]
dist.init_process_group("gloo", rank=rank, world_size=world)
lm = MambaLM(vocab_size=32, d_model=16, n_layer=1, scan_backend="reference")
lm.load_state_dict(torch.load(path))
ddp = torch.nn.parallel.DistributedDataParallel(lm)
ids = torch.load(path + ".ids")[rank::world]
loss = torch.nn.functional.cross_entropy(ddp(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
loss.backward()
torch.save({n: p.grad for n, p in lm.named_parameters()}, f"{path}.grad{rank}")
dist.destroy_process_group()
"""


def test_ddp_two_processes_give_the_single_process_gradients(tmp_path):
    torch.manual_seed(0)
    lm = MambaLM(vocab_size=32, d_model=16, n_layer=1, scan_backend="reference")
    ids = torch.randint(0, 32, (4, 17))
    path = str(tmp_path / "m.pt")
    torch.save(lm.state_dict(), path)
    torch.save(ids, path + ".ids")
    # one process, the same global batch (DDP averages the two ranks' mean losses)
    loss = sum(torch.nn.functional.cross_entropy(lm(ids[r::2, :-1]).flatten(0, 1),
                                                 ids[r::2, 1:].flatten()) for r in range(2)) / 2
    loss.backward()
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    with socket.socket() as s:  # a free loopback port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), path], env=env,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    for r in range(2):  # both ranks hold the all-reduced gradients
        got = torch.load(f"{path}.grad{r}")
        for n, param in lm.named_parameters():
            assert torch.allclose(got[n], param.grad, rtol=1e-5, atol=1e-7), (r, n)
