"""Output and gradient buffers every backend's kernels write, in one layout:
out (batch, dim, L) in u's dtype; checkpoints (batch, dim, n_chunks, N[, 2]) fp32; last state
(batch or num_seqs, dim, N[, 2]) fp32 (and its gradient, read by backward); initial state's
gradient (batch or num_seqs, dim, N[, 2]) fp32; the varlen position table (L,) int32, (2, L)
with initial states; gradients of u / delta / z in u's dtype; dA, dD, d delta_bias and
constant dB / dC as per-batch-row fp32 partials (summed here after the kernel, no atomics);
variable dB / dC as fp32 zeros the kernel adds into (atomics), or, for a deterministic backward,
one fp32 partial per channel block of a group, summed here in a fixed order. A backend may ask
for the atomics' buffer step-major, (batch, groups, L[*2], NP) with NP >= N states per row, so
that a step's states are one vector reduction; finish_grads copies it into the canonical layout
in the input's dtype. A backward whose sequence is cut into splits (CUDA) keeps one per-row
partial per (split, batch row); the splits' end states (or adjoints) and decays are fp32
(splits, batch, dim, N[, 2]) each."""
from __future__ import annotations

import os

import torch

from ssmgen.inputs import Call
from ssmgen.spec import DTYPE_BYTES


def new(shape, dtype, device):
    """Uninitialized buffer; NaN-filled under SSMGEN_POISON=1 (tests), so an element a kernel
    fails to write shows up as NaN instead of passing by luck."""
    if os.environ.get("SSMGEN_POISON") == "1":
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def n_chunks(call: Call) -> int:
    return -(-call.seqlen // call.spec.chunk_len)


def memory_chunk_len(spec) -> int:
    """The shortest chunk_len (a power of two, at least 16) whose fp32 checkpoints take no more
    bytes than u (N[*2] * 4 bytes per chunk against chunk * u's element size per channel): what
    the forward saves for the backward then stays within one input-sized tensor, as mamba-ssm's
    (it saves its ungated out). The tuner's memory rule (autotune.pick); d_state 128 at bf16
    needs 256."""
    need = spec.d_state * (2 if spec.complex_A else 1) * 4 // DTYPE_BYTES[spec.dtype]
    return max(16, 1 << max(0, need - 1).bit_length())


def _kx(call: Call) -> tuple:
    return (2,) if call.spec.complex_A else ()


def forward_buffers(call: Call, save_ckpt: bool):
    """(out, checkpoints, last state or None)."""
    b, d, L, N, dev = call.batch, call.dim, call.seqlen, call.spec.d_state, call.u.device
    out = new((b, d, L), call.u.dtype, dev)
    ckpt = new((b, d, n_chunks(call), N) + _kx(call) if save_ckpt else (1,), torch.float32, dev)
    last = (new((call.num_states, d, N) + _kx(call), torch.float32, dev)
            if call.spec.return_last_state else None)
    return out, ckpt, last


def _empty_seqs(call: Call, like):
    """Packed sequences with no step (no kernel writes their rows), shaped to mask `like`."""
    cu = call.cu_seqlens
    return (cu[1:] == cu[:-1]).view((-1,) + (1,) * (like.dim() - 1))


def finish_last(call: Call, last):
    if last is None:
        return None
    if call.cu_seqlens is not None:  # an empty sequence's state never left its start
        if call.spec.has_initial_state:
            last = torch.where(_empty_seqs(call, last), initial_state(call), last)
        else:
            last.masked_fill_(_empty_seqs(call, last), 0.0)
    return torch.view_as_complex(last) if call.spec.complex_A else last


def _real(t):
    return torch.view_as_real(t) if t.is_complex() else t


def initial_state(call: Call):
    """The initial state as fp32 (batch, dim, N[, 2]), or None."""
    return None if call.initial_state is None else _real(call.initial_state)


def dlast(call: Call, g):
    """The last state's gradient as contiguous fp32 (rows, dim, N[, 2]) (zeros for None), or
    None when the call returns no last state."""
    if not call.spec.return_last_state:
        return None
    shape = (call.num_states, call.dim, call.spec.d_state) + _kx(call)
    if g is None:
        return torch.zeros(shape, dtype=torch.float32, device=call.u.device)
    return _real(g).to(torch.float32).contiguous().reshape(shape)


def varlen_info(call: Call):
    """Per timestep (in memory order) of a packed batch: bit 0 = the state resets before this
    step (a sequence's first step in scan order); bits 1.. = 1 + the index of the sequence whose
    last step (in scan order) this is, else 0. With initial states a second row follows: the
    index of the sequence each step belongs to (whose initial state a reset takes). Built on
    the device, no host sync."""
    if call.cu_seqlens is None:
        return None
    cu, L = call.cu_seqlens, call.seqlen
    starts, ends = cu[:-1], cu[1:] - 1
    nonempty = (cu[1:] > cu[:-1]).to(torch.int32)
    first, last = (ends, starts) if call.spec.reverse else (starts, ends)
    info = torch.zeros(L, dtype=torch.int32, device=cu.device)
    seq = torch.arange(1, cu.numel(), dtype=torch.int32, device=cu.device)
    # empty sequences add 0 (their clamped index may be another sequence's step)
    info.index_put_((first.clamp(0, L - 1),), nonempty, accumulate=True)
    info.index_put_((last.clamp(0, L - 1),), 2 * seq * nonempty, accumulate=True)
    if call.spec.has_initial_state:
        steps = torch.arange(L, dtype=cu.dtype, device=cu.device)
        owner = torch.searchsorted(cu[1:], steps, right=True, out_int32=True)
        info = torch.stack([info, owner])
    return info


def split_buffers(call: Call, splits: int):
    """(end states or adjoints, decays) of a call's sequence splits; 1-element dummies for one
    split (nothing reads them)."""
    shape = (splits, call.batch, call.dim, call.spec.d_state) + _kx(call) if splits > 1 else (1,)
    return (new(shape, torch.float32, call.u.device), new(shape, torch.float32, call.u.device))


def grad_buffers(call: Call, slots: dict | None = None, rows: int = 1, step_major: int = 0) -> dict:
    """slots (deterministic backward): {"B": S, "C": S}, the partials per group of variable
    dB / dC, one per channel block of a group, summed in finish_grads. rows: per-row partials
    per batch row (the splits of a split backward). step_major (NP > 0, no slots): variable
    dB / dC as step-major zeros (batch, groups, L[*2], NP)."""
    spec, dev = call.spec, call.u.device
    b, d, L, N = call.batch, call.dim, call.seqlen, spec.d_state
    pr = b * rows  # rows of the per-row partials
    f32 = dict(dtype=torch.float32, device=dev)
    io = dict(dtype=call.u.dtype, device=dev)
    g = dict(du=new((b, d, L), **io), ddelta=new((b, d, L), **io),
             dz=new((b, d, L), **io) if spec.has_z else None,
             dA=new((pr, d, N) + _kx(call), **f32),
             dD=new((pr, d), **f32) if spec.has_D else None,
             ddbias=new((pr, d), **f32) if spec.has_delta_bias else None,
             dinit=(new((call.num_states, d, N) + _kx(call), **f32) if spec.has_initial_state
                    else None))
    for X in ("B", "C"):
        t = getattr(call, X)
        if t.dim() == 4 and slots:
            g["d" + X] = torch.zeros((slots[X],) + t.shape, **f32)
        elif t.dim() == 4 and step_major:
            g["d" + X] = torch.zeros(tuple(t.shape[:2]) + (t.shape[3], step_major), **f32)
        elif t.dim() == 4:
            g["d" + X] = torch.zeros(t.shape, **f32)
        else:  # constant B / C: per-row partials
            g["d" + X] = new((pr, d, N) + _kx(call), **f32)
    return g


def finish_grads(call: Call, g: dict, dlast=None, step_major: int = 0) -> dict:
    """Sums the per-batch-row partials. dlast (fp32, as `dlast` makes it, or None): an empty
    packed sequence's initial state is its last state, so it takes that gradient (or zero).
    step_major: as given to grad_buffers (its variable dB / dC are copied to the canonical
    layout, in the canonical B / C's dtype)."""
    if call.cu_seqlens is not None and g["dinit"] is not None:
        empty = _empty_seqs(call, g["dinit"])
        g["dinit"] = (g["dinit"].masked_fill_(empty, 0.0) if dlast is None
                      else torch.where(empty, dlast, g["dinit"]))
    return apply_grad_steps(grad_steps(call, g, step_major), g)


def grad_steps(call: Call, g: dict, step_major: int = 0) -> dict:
    """What finish_grads does to each kernel buffer of g, from metadata alone (a training
    plan keeps it for later calls with the same metadata, ssmgen.ops): "sum" (per-row
    partials summed over rows) or ("copy", shape, dtype, N) (step-major sums copied into the
    canonical layout and dtype)."""
    steps = {n: "sum" for n in ("dA", "dD", "ddbias") if g[n] is not None}
    for X in ("B", "C"):
        t = getattr(call, X)
        if t.dim() == 2 or g["d" + X].dim() == 5:  # per-row / per-block partials
            steps["d" + X] = "sum"
        elif step_major:
            steps["d" + X] = ("copy", tuple(t.shape), t.dtype, call.spec.d_state)
    return steps


def apply_grad_steps(steps: dict, g: dict) -> dict:
    for n, step in steps.items():
        if step == "sum":  # one row: its view, no kernel
            g[n] = g[n][0] if g[n].shape[0] == 1 else g[n].sum(0)
        else:  # one copy: transposed, padding dropped, cast
            _, shape, dtype, N = step
            sm = g[n][..., :N].transpose(-1, -2)
            g[n] = torch.empty(shape, dtype=dtype, device=sm.device).copy_(sm)
    return g


# -- the decode step ---------------------------------------------------------------------------
def step_params(spec) -> list:
    """(name, kind) of the step kernel's parameters, in order, for both backends; kind: "io"
    (x's dtype), "f32", "i64" pointers, or "int". Strides are in elements of the fp32 / io
    views that ssmgen.step.normalize_step makes (complex: the imaginary part at +1 or +s_Xi)."""
    p = [("state", "f32"), ("x", "io"), ("dt", "io"), ("A", "f32"), ("B", "io"), ("C", "io")]
    p += [(n, k) for n, k, on in (("D", "f32", spec.has_D), ("z", "io", spec.has_z),
                                  ("dbias", "f32", spec.has_delta_bias)) if on]
    p += [("out", "io")] + ([("idx", "i64")] if spec.has_state_indices else [])
    ints = ["P", "hpg", "pool", "s_sb", "s_sh", "s_sp", "s_xb", "s_xh", "s_xp", "s_tb", "s_th",
            "s_tp"]
    ints += ["s_zb", "s_zh", "s_zp"] if spec.has_z else []
    ints += ["s_ah", "s_ap", "s_an", "s_Bb", "s_Bg", "s_Bn", "s_Cb", "s_Cg", "s_Cn"]
    ints += ["s_Bi", "s_Ci"] if spec.complex_A else []
    return p + [(n, "int") for n in ints + ["s_ob", "s_oh"]]


def step_args(call, out) -> dict:
    """Tensors and integers of one step launch, by parameter name."""
    a = dict(state=call.state, x=call.x, dt=call.dt, A=call.A, B=call.B, C=call.C, D=call.D,
             z=call.z, dbias=call.dt_bias, out=out, idx=call.indices, P=call.headdim,
             hpg=call.heads // call.groups, pool=call.state.shape[0], s_ob=out.stride(0),
             s_oh=out.stride(1))
    for pre, t in (("s_s", call.state), ("s_x", call.x), ("s_t", call.dt), ("s_z", call.z)):
        if t is not None:
            a.update({pre + "b": t.stride(0), pre + "h": t.stride(1), pre + "p": t.stride(2)})
    a.update(s_ah=call.A.stride(0), s_ap=call.A.stride(1), s_an=call.A.stride(2))
    for X in ("B", "C"):
        t = getattr(call, X)
        a.update({f"s_{X}b": t.stride(0), f"s_{X}g": t.stride(1), f"s_{X}n": t.stride(2)})
        if t.dim() == 4:
            a[f"s_{X}i"] = t.stride(3)
    return a


def step_out(call):
    return new((call.batch, call.heads, call.headdim), call.x.dtype, call.x.device)


# -- documented memory -------------------------------------------------------------------------
def forward_bytes(call: Call, save_ckpt: bool, splits: int = 1) -> int:
    """What forward allocates: out (u's shape and dtype), the chunk checkpoints (fp32
    (batch, dim, ceil(L / chunk_len), N[, 2]), only when a backward can follow) and the last
    state (fp32 (rows, dim, N[, 2])); varlen adds an int32 per step (two with initial
    states); a split forward adds its split buffers while it runs."""
    b, d, L, N, k = call.batch, call.dim, call.seqlen, call.spec.d_state, len(_kx(call)) + 1
    io = call.u.element_size()
    total = b * d * L * io + (b * d * n_chunks(call) * N * k * 4 if save_ckpt else 4)
    total += 2 * splits * b * d * N * k * 4 if splits > 1 else 0
    total += call.num_states * d * N * k * 4 if call.spec.return_last_state else 0
    return total + (L * 4 * (1 + call.spec.has_initial_state) if call.cu_seqlens is not None
                    else 0)


def backward_bytes(call: Call, slots: dict | None = None, scratch: int = 0,
                   rows: int = 1, step_major: int = 0) -> int:
    """What backward allocates at its peak: the gradient buffers of grad_buffers (du, ddelta,
    dz in u's dtype; fp32 per-row partials (batch, dim, N[, 2]) for dA and constant dB / dC,
    (batch, dim) for dD and d(delta_bias); fp32 dinit (rows, dim, N[, 2]); fp32 variable
    dB / dC, times `slots` in deterministic mode), the backend's scratch bytes, a zero dlast
    when none is given, and the variable dB / dC cast to their input's dtype (alive together
    with the fp32 sums). rows: per-row partials per batch row (splits). step_major: as given
    to grad_buffers (the step-major sums, NP per row, and their canonical copy, alive together)."""
    s, b, d, L, N = call.spec, call.batch, call.dim, call.seqlen, call.spec.d_state
    k, io = len(_kx(call)) + 1, call.u.element_size()
    total = (2 + s.has_z) * b * d * L * io
    total += (b * rows + call.num_states * s.has_initial_state) * d * N * k * 4
    total += b * rows * d * 4 * (s.has_D + s.has_delta_bias) + scratch
    total += call.num_states * d * N * k * 4 if s.return_last_state else 0
    for X in ("B", "C"):
        t = getattr(call, X)
        if t.dim() == 4 and step_major and not slots:
            total += t.numel() // call.spec.d_state * step_major * 4 + t.numel() * t.element_size()
        elif t.dim() == 4:
            total += t.numel() * 4 * ((slots or {}).get(X, 1) + (slots is not None))
            total += t.numel() * t.element_size() if t.element_size() != 4 else 0
        else:
            total += b * rows * d * N * k * 4
    return total
