"""Context-parallel selective scan: the sequence (L) split across the ranks of a process group.

Rank r of the group holds segment r of L (rank order = sequence order; segments may differ in
length, each >= 1): u, delta, z and variable B/C are the rank's slices along L, while A, D,
delta_bias, constant B/C and initial_state are replicated (every rank passes them).

Algorithm (the scan is linear in its state: a segment started from state h ends in P h + S):
  pass 1   every rank but the first scans its segment from a zero state -> S_r (its final state)
           and computes its decay P_r = exp(A * sum_t delta'_t) in torch (no scan needed);
           the first rank scans once from initial_state (or zero): its output is final and its
           S is its true final state. The last rank skips pass 1 unless return_last_state.
  exchange one all_gather of (S_r, P_r) through torch.distributed (NCCL, gloo, ...);
           every rank composes h_in_{r+1} = P_r h_in_r + S_r.
  pass 2   every rank but the first scans again from h_in_r: its output.
reverse=True runs the same with the rank order reversed (the last rank starts, from
initial_state). Cost per rank: two scans (forward and backward) for the middle ranks, one for
the first rank and, without return_last_state, the last (the first rank, which waits for the
others anyway, copies its output once in training); one all_gather of 2 (batch, dim, N) states
per rank in the forward and one reduce-scatter (NCCL; all-reduce elsewhere) in the backward.
The backward is autograd through both passes and the exchange: every rank must run a backward
through its outputs (out or the last state) of every call, as with DDP, since the exchange's
backward is a collective (torch.autograd.grad for any subset of the inputs is fine: every input
reaches the exchange). Eager mode only (the collectives are not traced by torch.compile).

Gradients. Segmented inputs (u, delta, z, variable B/C) get the full-sequence gradient of their
slice. Replicated inputs (A, D, delta_bias, constant B/C, initial_state) get the rank-local
contribution: the SUM over ranks is the full-sequence gradient (DDP, which averages, gives that
sum / world_size; or all_reduce the gradients yourself). initial_state only enters on the
starting rank; the other ranks get a zero gradient (never None), so all ranks can all-reduce.

The last state (return_last_state=True) is the state after the whole sequence, the same value
on every rank. Its gradient is summed over ranks like any loss term: if every rank puts
f(last_state) in its loss, f counts world_size times.

Before any scan, the ranks exchange their argument metadata (check_ranks=True): an argument
that fails the single-GPU validation on one rank raises there (the same error as
selective_scan) and raises on every other rank naming that rank; ranks disagreeing on batch,
dim, d_state, dtypes, B/C forms or flags raise ValueError on every rank. This costs one small
all_gather_object (a host sync); check_ranks=False skips it once the call is known good. An
error inside a scan (after validation) raises on its rank only; the others then wait in the
collective until the process group's timeout.
cu_seqlens (packed sequences) are refused: a packed sequence crossing a segment boundary would
need per-sequence exchange.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .inputs import normalize
from .ops import _split_config, pick_backend, selective_scan


class _AllGather(torch.autograd.Function):
    """all_gather with autograd: the backward sums every rank's gradient for this rank's piece
    (reduce_scatter on NCCL; elsewhere an all_reduce: not every backend and torch version has
    reduce_scatter; the tensors are small)."""

    @staticmethod
    def forward(ctx, x, group, rank, world):
        ctx.group, ctx.rank = group, rank
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x, group=group)
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        grads = [g.contiguous() for g in grads]
        if dist.get_backend(ctx.group) == "nccl":
            mine = torch.empty_like(grads[ctx.rank])
            dist.reduce_scatter(mine, grads, group=ctx.group)
        else:
            stacked = torch.stack(grads)
            dist.all_reduce(stacked, group=ctx.group)
            mine = stacked[ctx.rank]
        return mine, None, None, None


class _Tie(torch.autograd.Function):
    """x (copied), with `deps` in its graph: their gradients through it are zero (expanded, no
    memory). Makes the exchange part of every rank's backward graph whatever inputs autograd
    differentiates for (torch.autograd.grad prunes nodes off the paths to its inputs; a rank
    skipping the exchange's backward collective would hang the others)."""

    @staticmethod
    def forward(ctx, x, *deps):
        ctx.deps = [(d.shape, d.dtype, d.device) for d in deps]
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return (g, *[torch.zeros((), dtype=dt, device=dev).expand(shape)
                     for shape, dt, dev in ctx.deps])


def _segment_decay(delta, A, delta_bias, delta_softplus):
    """P = prod_t exp(delta'_t A) = exp(A * sum_t delta'_t): (batch, dim, N), A's dtype."""
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    return torch.exp(dt.sum(-1)[..., None] * A)


def _metadata(call, needs_grad):
    """(argument, what, value) the ranks must agree on."""
    s = call.spec
    return [("u", "batch (u.shape[0])", call.batch), ("u", "dim (u.shape[1])", call.dim),
            ("u", "dtype", s.dtype), ("u", "device type", call.u.device.type),
            ("A", "d_state (A.shape[1])", s.d_state), ("A", "dtype", str(call.A.dtype)),
            ("B", "form", (s.B_layout, call.groups_B)), ("C", "form", (s.C_layout, call.groups_C)),
            ("D", "presence", s.has_D), ("z", "presence", s.has_z),
            ("delta_bias", "presence", s.has_delta_bias),
            ("initial_state", "presence", s.has_initial_state),
            ("delta_softplus", "value", s.delta_softplus),
            ("return_last_state", "value", s.return_last_state), ("reverse", "value", s.reverse),
            ("requires_grad", "need of a backward (grad mode and inputs requiring grad)",
             needs_grad)]


def _check_ranks(err, meta, group, world):
    """Every rank learns every rank's local error and metadata; raises on every rank."""
    mine = (None if err is None else (type(err).__name__, str(err)), meta)
    got = [None] * world
    dist.all_gather_object(got, mine, group=group)
    if err is not None:
        raise err
    for r, (e, _) in enumerate(got):
        if e is not None:
            cls = TypeError if e[0] == "TypeError" else ValueError
            raise cls(f"context_parallel_scan: rank {r}'s arguments are invalid: {e[1]}")
    for i, (arg, what, _) in enumerate(meta):
        vals = [m[i][2] for _, m in got]
        if any(v != vals[0] for v in vals):
            per = ", ".join(f"rank {r}: {v}" for r, v in enumerate(vals))
            raise ValueError(f"{arg}: every rank must pass the same {what}; got {per}")


def context_parallel_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, return_last_state=False, *, initial_state=None,
                          cu_seqlens=None, reverse=False, group=None, backend=None, config=None,
                          check_ranks=True):
    """selective_scan over a sequence split along L across the ranks of `group` (None: the
    default group); the arguments, shapes and returns are selective_scan's, with this rank's
    segment of u, delta, z and variable B/C (see the module docstring). Returns this rank's
    out, or (out, last_state) with the whole sequence's last state on every rank.
    backend and config go to every selective_scan call on this rank."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("context_parallel_scan needs torch.distributed initialized "
                           "(torch.distributed.init_process_group)")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the process group")
    world = dist.get_world_size(group)
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    needs_grad = torch.is_grad_enabled() and any(
        isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)
    err = meta = None
    try:  # the single-GPU validation, before any communication
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens: packed sequences are not supported by "
                             "context_parallel_scan (a sequence would cross segment boundaries)")
        call = normalize(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                         initial_state=initial_state, reverse=reverse)
        pick_backend(backend, call.u.device)
        _split_config(config)
        meta = _metadata(call, needs_grad)
    except Exception as e:  # raised on every rank after the exchange, never a lone hang
        err = e
    if check_ranks and world > 1:
        _check_ranks(err, meta, group, world)
    elif err is not None:
        raise err
    kw = dict(delta_softplus=delta_softplus, reverse=reverse, backend=backend, config=config)
    if world == 1:
        return selective_scan(u, delta, A, B, C, D, z, delta_bias,
                              return_last_state=return_last_state, initial_state=initial_state,
                              **kw)

    order = list(range(world))[::-1] if reverse else list(range(world))
    pos = order.index(rank)
    cplx = A.is_complex()
    state_shape = (u.shape[0], u.shape[1], A.shape[1])
    # upstream: the inputs the exchanged piece depends on in value (the state never depends on
    # C, D or z; the reference backend's graph follows the values, so its autograd knows)
    out, upstream = None, ()
    if pos == 0:  # the starting rank: one scan, from initial_state; S = its true final state
        out, S = selective_scan(u, delta, A, B, C, D, z, delta_bias, return_last_state=True,
                                initial_state=initial_state, **kw)
        P = torch.zeros(state_shape, dtype=A.dtype, device=u.device)  # unused
        upstream = (u, delta, A, B, delta_bias, initial_state)
    elif pos == world - 1 and not return_last_state:  # nobody needs the last rank's S and P
        S = P = torch.zeros(state_shape, dtype=A.dtype, device=u.device)
    else:  # pass 1: from a zero state; D and z do not touch the state
        _, S = selective_scan(u, delta, A, B, C, None, None, delta_bias, return_last_state=True,
                              **kw)
        P = _segment_decay(delta, A, delta_bias, delta_softplus)
        upstream = (u, delta, A, B, delta_bias)
    piece = torch.stack([S, P])
    if cplx:
        piece = torch.view_as_real(piece)
    if needs_grad:  # every input requiring grad reaches the exchange's backward
        missing = [x for x in tensors if isinstance(x, torch.Tensor) and x.requires_grad
                   and not any(x is y for y in upstream)]
        if missing:
            piece = _Tie.apply(piece, *missing)
    parts = _AllGather.apply(piece, group, rank, world)

    def state(j, k):  # rank j's S (k=0) or P (k=1)
        x = parts[j][k]
        return torch.view_as_complex(x) if cplx else x

    h = state(order[0], 0)  # the state entering position 1 of the order
    h_in = h if pos == 1 else None
    for k in range(1, world if return_last_state else pos):
        h = state(order[k], 1) * h + state(order[k], 0)  # leaving position k
        if k + 1 == pos:
            h_in = h
    if pos == 0:
        if needs_grad:  # the exchange's backward on this rank too (its out does not need it)
            out = _Tie.apply(out, parts[0])
    else:  # pass 2: from the incoming state
        out = selective_scan(u, delta, A, B, C, D, z, delta_bias, initial_state=h_in, **kw)
    return (out, h) if return_last_state else out


def previous_tail(x, width: int, group=None):
    """The last `width` steps (along the last dim) of the previous rank's x, zeros on the first
    rank: the halo a causal conv of width + 1 taps needs at a segment's start. Differentiable
    (the gradient goes back to the rank it came from). Every rank's segment must hold at least
    `width` steps."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if x.shape[-1] < width:
        raise ValueError(f"x: every rank's segment needs at least {width} steps for the causal "
                         f"conv's halo, got {x.shape[-1]}")
    tail = x[..., x.shape[-1] - width:]
    if world == 1:
        return torch.zeros_like(tail)
    parts = _AllGather.apply(tail, group, rank, world)
    if rank == 0:  # unused here, but the gather's backward is a collective every rank runs
        return _Tie.apply(torch.zeros_like(tail), parts[0])
    return parts[rank - 1]

