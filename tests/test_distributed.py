"""Context-parallel scan (ssmgen.distributed) over gloo on CPU, 2 to 4 processes.

The parent draws the whole sequence and its float64 reference (out, last state, every gradient);
each worker process (this file run as a script) scans its segment of L with
context_parallel_scan and saves its results. Segments concatenate to the reference output and
segmented gradients; replicated inputs' gradients summed over ranks give the reference
gradients; every rank holds the whole sequence's last state. Workers put the last state's
gradient on the ranks with weights summing to 1 (each rank's share flows back to every rank).
"""
import os
import subprocess
import sys

import pytest
import torch

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
TRITON_CFG = {"chunk_len": 16, "block_l": 8, "block_d": 2}

# lens: segment lengths per rank (their count is the world size). B/C forms: const (dim, N),
# var (batch, N, L), groups (batch, 2, N, L), interleaved (complex A, real (batch, 2, N, 2L)).
CASES = {
    "real_groups_init": dict(lens=[7, 13], B="groups", C="groups", init=True, last=True),
    "real_const_nolast": dict(lens=[9, 4], B="const", C="const", z=False, softplus=False,
                              only="D"),
    "fp16_groups": dict(lens=[6, 10], B="groups", C="var", init=True, last=True,
                        dtype=torch.float16),
    "cplx_reverse_init": dict(lens=[4, 9, 6], cplx=True, B="groups", C="var", init=True,
                              last=True, reverse=True),
    "real_reverse_nolast": dict(lens=[5, 8, 3], B="var", C="groups", reverse=True, bias=False,
                                only="z"),
    "cplx_interleaved": dict(lens=[3, 5, 1, 8], cplx=True, B="interleaved", C="const",
                             init=True, last=True),
    "real_reverse_init": dict(lens=[6, 2, 7, 5], B="var", C="groups", reverse=True, init=True,
                              last=True),
    "triton": dict(lens=[5, 7], batch=1, dim=4, N=4, B="groups", C="var", init=True, last=True,
                   backend="triton"),
}
DEFAULTS = dict(batch=2, dim=4, N=3, cplx=False, D=True, z=True, bias=True, softplus=True,
                init=False, last=False, reverse=False, backend="reference", only=None,
                dtype=torch.float32)
# only: also differentiate for that input alone (autograd.grad prunes the graph to it: the
# exchange's backward must still run on every rank)


def _case(name):
    return {**DEFAULTS, **CASES[name]}


def _inputs(c, seed):
    """The whole sequence's inputs (random, never zero) and the upstream gradients."""
    g = torch.Generator().manual_seed(seed)
    b, d, N, L = c["batch"], c["dim"], c["N"], sum(c["lens"])
    ct = torch.complex64 if c["cplx"] else torch.float32

    def bc(form):
        shape = {"const": (d, N), "var": (b, N, L), "groups": (b, 2, N, L),
                 "interleaved": (b, 2, N, 2 * L)}[form]
        X = torch.randn(shape, generator=g, dtype=torch.float32 if form == "interleaved" else ct)
        return X.to(c["dtype"]) if form != "const" and not X.is_complex() else X

    A = -0.1 - 0.5 * torch.rand(d, N, generator=g)
    if c["cplx"]:
        A = torch.complex(A, torch.randn(d, N, generator=g))
    dt = c["dtype"]
    x = dict(u=torch.randn(b, d, L, generator=g).to(dt),
             delta=(0.05 + 0.5 * torch.rand(b, d, L, generator=g)).to(dt), A=A, B=bc(c["B"]),
             C=bc(c["C"]), D=torch.randn(d, generator=g) if c["D"] else None,
             z=torch.randn(b, d, L, generator=g).to(dt) if c["z"] else None,
             delta_bias=0.05 + 0.1 * torch.rand(d, generator=g) if c["bias"] else None,
             initial_state=torch.randn(b, d, N, generator=g, dtype=ct) if c["init"] else None)
    dout = torch.randn(b, d, L, generator=g).to(dt)  # the output's dtype
    dlast = torch.randn(b, d, N, generator=g, dtype=ct)
    return x, dout, dlast


def _segmented(c, name):
    return name in ("u", "delta", "z") or (name in ("B", "C") and c[name] != "const")


def _slice(c, name, t, r):
    """Rank r's part of input `name` (replicated inputs: the whole tensor)."""
    if t is None or not _segmented(c, name):
        return t
    a, b = sum(c["lens"][:r]), sum(c["lens"][:r + 1])
    k = 2 if c.get(name) == "interleaved" else 1
    return t[..., k * a:k * b]


def _kw(c):
    return dict(delta_softplus=c["softplus"], return_last_state=c["last"], reverse=c["reverse"],
                config=TRITON_CFG if c["backend"] == "triton" else None)


# -- worker processes ------------------------------------------------------------------------
def _run_case(name, rank, world, tmp):
    from ssmgen.distributed import context_parallel_scan

    c = _case(name)
    x, dout, dlast = torch.load(os.path.join(tmp, f"{name}.in"))
    local = {k: None if v is None else _slice(c, k, v, rank).detach().clone().requires_grad_()
             for k, v in x.items()}
    res = context_parallel_scan(*[local[k] for k in NAMES[:8]], backend=c["backend"],
                                initial_state=local["initial_state"], **_kw(c))
    out, last = res if c["last"] else (res, None)
    outs, grads = [out], [_slice(c, "u", dout, rank)]
    if c["last"]:  # weights (r + 1) / sum: every rank carries a share of the last state's loss
        outs.append(last)
        grads.append(dlast * (rank + 1) / (world * (world + 1) / 2))
    leaves = [k for k in NAMES if local[k] is not None]
    # allow_unused=False: every input gets a gradient (initial_state: zeros where unused)
    g = torch.autograd.grad(outs, [local[k] for k in leaves], grads, retain_graph=True)
    if c["only"]:
        alone = torch.autograd.grad(outs, local[c["only"]], grads)[0]
        assert torch.equal(alone, g[leaves.index(c["only"])]), (name, rank)
    torch.save(dict(out=out.detach(), last=None if last is None else last.detach(),
                    grads=dict(zip(leaves, g))), os.path.join(tmp, f"{name}.{rank}"))


def _run_errors(rank, world, tmp):
    """Mismatched dim; an invalid argument on one rank; then a good call still works; groups:
    one of size 1 is the plain scan, a process outside the group is refused."""
    import torch.distributed as dist

    import ssmgen
    from ssmgen.distributed import context_parallel_scan

    def call(dim, **kw):
        u = torch.randn(1, dim, 5)
        return context_parallel_scan(u, torch.rand(1, dim, 5), -torch.rand(dim, 2),
                                     torch.randn(dim, 2), torch.randn(dim, 2),
                                     backend="reference", **kw)

    errors = []
    for kw in (dict(dim=4 + 2 * rank), dict(dim=4, cu_seqlens=torch.tensor([0, 5]))
               if rank == 1 else dict(dim=4)):
        try:
            call(**kw)
            errors.append(None)
        except (TypeError, ValueError) as e:
            errors.append((type(e).__name__, str(e)))
    assert call(4, group=dist.new_group([0, 1])).shape == (1, 4, 5)
    alone = [dist.new_group([r]) for r in range(world)]  # every rank creates every group
    x = (torch.randn(2, 3, 6), torch.rand(2, 3, 6), -torch.rand(3, 2), torch.randn(2, 2, 6),
         torch.randn(2, 2, 6))
    one = context_parallel_scan(*x, return_last_state=True, group=alone[rank],
                                backend="reference")
    ref = ssmgen.selective_scan(*x, return_last_state=True, backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(one, ref))
    try:
        context_parallel_scan(*x, group=alone[1 - rank], backend="reference")
        errors.append(None)
    except ValueError as e:
        errors.append(("ValueError", str(e)))
    torch.save(errors, os.path.join(tmp, f"errors.{rank}"))


MIXER_LENS = [5, 7, 4]  # segments of the Mamba mixer test (each >= d_conv - 1)


def _mixer(**kw):
    from ssmgen.nn import Mamba

    return Mamba(8, d_state=4, d_conv=4, expand=2, scan_backend="reference", **kw)


def _run_mixer(rank, world, tmp):
    """The mixer with context_parallel=True on this rank's segment of the sequence."""
    sd, h, dout = torch.load(os.path.join(tmp, "mixer.in"))
    m = _mixer(context_parallel=True)
    m.load_state_dict(sd)
    a, b = sum(MIXER_LENS[:rank]), sum(MIXER_LENS[:rank + 1])
    x = h[:, a:b].clone().requires_grad_()
    out = m(x)
    out.backward(dout[:, a:b])
    torch.save(dict(out=out.detach(), dx=x.grad, grads={n: p.grad for n, p in
                                                        m.named_parameters()}),
               os.path.join(tmp, f"mixer.{rank}"))


def _worker(rank, world, tmp, names):
    from datetime import timedelta

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}",
                            rank=rank, world_size=world, timeout=timedelta(seconds=120))
    for name in names:
        if name == "errors":
            _run_errors(rank, world, tmp)
        elif name == "mixer":
            _run_mixer(rank, world, tmp)
        else:
            _run_case(name, rank, world, tmp)
    dist.destroy_process_group()


def _launch(tmp_path, world, names):
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("TRITON_INTERPRET", "1")
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(tmp_path),
                               *names], env=env, stderr=subprocess.PIPE, text=True)
             for r in range(world)]
    errs = []
    try:
        for p in procs:
            errs.append(p.communicate(timeout=300)[1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    failed = [r for r, p in enumerate(procs) if p.returncode != 0]
    assert not failed, "\n".join(f"rank {r}:\n{errs[r][-2500:]}" for r in failed)


# -- tests -----------------------------------------------------------------------------------
def _reference(c, x, dout, dlast):
    """float64 out and last state of the whole sequence, and every input's gradient."""
    from ssmgen.reference import selective_scan_ref

    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in x.items()}
    kw = _kw(c)
    kw.pop("config")
    kw["return_last_state"] = True
    out, last = selective_scan_ref(*[leaves[k] for k in NAMES[:8]],
                                   initial_state=leaves["initial_state"], **kw)
    outs, grads = [out], [dout.double()]
    if c["last"]:
        outs.append(last)
        grads.append(dlast.to(last.dtype))
    names = [k for k in NAMES if leaves[k] is not None]
    g = torch.autograd.grad(outs, [leaves[k] for k in names], grads)
    return out.detach(), last.detach(), dict(zip(names, g))


def _check(tmp_path, names, world):
    from ssmgen.numerics import assert_close

    for name in names:
        c = _case(name)
        x, dout, dlast = torch.load(tmp_path / f"{name}.in")
        out, last, grads = _reference(c, x, dout, dlast)
        got = [torch.load(tmp_path / f"{name}.{r}") for r in range(world)]
        # reference workers: fp32 rounding of per-segment float64 scans only
        dt = c["dtype"]  # fp32: also a tight bound (the reference: seen 3e-7; Triton: 3e-7)
        tol = (1e-5 if c["backend"] == "triton" else 2e-6) if dt == torch.float32 else 1.0
        rel = assert_close(f"{name}: out", torch.cat([g["out"] for g in got], -1), out, dt)
        assert rel <= tol, (name, "out", rel)
        if c["last"]:
            for r, g in enumerate(got):
                assert torch.equal(g["last"], got[0]["last"]), (name, "last differs on rank", r)
            assert_close(f"{name}: last", got[0]["last"], last, torch.float32)
        for k, ref in grads.items():
            if _segmented(c, k):
                mine = torch.cat([g["grads"][k] for g in got], -1)
            else:  # replicated: the rank-local contributions sum to the gradient
                mine = sum(g["grads"][k] for g in got)
            rel = assert_close(f"{name}: d{k}", mine, ref, dt)
            assert rel <= tol, (name, "d" + k, rel)
        if c["init"]:  # only the starting rank's initial_state is used; the others get zeros
            start = world - 1 if c["reverse"] else 0
            for r, g in enumerate(got):
                if r != start:
                    assert not g["grads"]["initial_state"].any(), (name, r)


BY_WORLD = {w: [n for n, c in CASES.items() if len(c["lens"]) == w and n != "triton"]
            for w in (2, 3, 4)}


def _prepare(tmp_path, names):
    for i, name in enumerate(names):
        torch.save(_inputs(_case(name), seed=100 + 7 * i), tmp_path / f"{name}.in")


def _test_world(tmp_path, world, names):
    _prepare(tmp_path, names)
    _launch(tmp_path, world, names)
    _check(tmp_path, names, world)


def test_two_ranks_equal_the_single_process_scan(tmp_path):
    _test_world(tmp_path, 2, BY_WORLD[2])


def test_three_ranks_equal_the_single_process_scan(tmp_path):
    _test_world(tmp_path, 3, BY_WORLD[3])


def test_four_ranks_equal_the_single_process_scan(tmp_path):
    _test_world(tmp_path, 4, BY_WORLD[4])


@pytest.mark.interp  # CPU tensors: Triton's interpreter (on a GPU machine, CUDA tensors and
def test_triton_backend_two_ranks(tmp_path):  # gloo would be another test)
    _test_world(tmp_path, 2, ["triton"])


def test_invalid_arguments_raise_on_every_rank(tmp_path):
    _launch(tmp_path, 2, ["errors"])
    e0, e1 = (torch.load(tmp_path / f"errors.{r}") for r in range(2))
    for kind, msg in (e0[0], e1[0]):  # dim 4 vs 6
        assert kind == "ValueError" and msg.startswith("u: every rank must pass the same dim")
        assert "rank 0: 4, rank 1: 6" in msg
    assert e1[1][0] == "ValueError" and e1[1][1].startswith("cu_seqlens:")
    assert e0[1][0] == "ValueError" and "rank 1's arguments are invalid: cu_seqlens" in e0[1][1]
    for e in (e0, e1):  # a group without this process
        assert e[2] == ("ValueError", "group: this process is not a member of the process group")


def test_context_parallel_mamba_mixer_equals_the_whole_sequence(tmp_path):
    """Mamba(context_parallel=True) on 3 ranks: the conv's halo from the previous rank and the
    context-parallel scan give the one-process output, input gradient and (summed over ranks)
    parameter gradients."""
    torch.manual_seed(0)
    m = _mixer()
    h = torch.randn(2, sum(MIXER_LENS), 8)
    dout = torch.randn_like(h)
    torch.save((m.state_dict(), h, dout), tmp_path / "mixer.in")
    x = h.clone().requires_grad_()
    out = m(x)
    out.backward(dout)
    _launch(tmp_path, len(MIXER_LENS), ["mixer"])
    got = [torch.load(tmp_path / f"mixer.{r}") for r in range(len(MIXER_LENS))]

    def rel(a, b):
        assert torch.isfinite(a).all()
        return ((a - b).norm() / b.norm()).item()
    assert rel(torch.cat([g["out"] for g in got], 1), out) < 1e-5
    assert rel(torch.cat([g["dx"] for g in got], 1), x.grad) < 1e-5
    for n, p in m.named_parameters():
        assert rel(sum(g["grads"][n] for g in got), p.grad) < 1e-5, n


if __name__ == "__main__":  # a worker: rank world tmp_dir case...
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:])
