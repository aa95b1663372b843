"""The C++ launch of planned decode steps (backends/fastcall.cpp), on any machine: it builds, packs
each kernel parameter into its cell, and refuses (None, nothing launched) every call whose
arguments differ from the plan's in any metadata the signature path reads, in Python type, in
None-ness or in a specialized pointer's alignment. Its launches on a GPU are checked against
the float64 reference in test_plans.py.
"""
import struct

import pytest
import torch
from hypothesis import given, settings, strategies as st

from ssmgen.backends import fastcall


@pytest.fixture(scope="module")
def mod():
    m = fastcall.module()
    assert m is not None, "the C++ launcher must build here (ninja, a C++ compiler, torch headers)"
    return m


def make_raw(seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(6, 4, 3, generator=g)
    x = torch.randn(2, 4, generator=g).to(torch.bfloat16)
    D = torch.nn.Parameter(torch.randn(4, generator=g))
    return (state, x, None, D)


def launch_of(mod, raw, aligned=(-1, -1, -1), cells=(0, 0, 11, 2**40, 0, 0), copy=0):
    # cells: state, x, an int32 size, an int64 stride, D, out; copy: x read as a contiguous copy
    return mod.Launch(raw, list(cells), [(0, 0, aligned[0], 0), (1, 1, aligned[1], copy),
                                         (4, 3, aligned[2], 0)],
                      [(5, 1, [2, 4], False)], 1, 0, lambda d: 0, 1, [1, 1, 1], 32, 0)


def test_pack_places_pointers_and_keeps_fixed_cells(mod):
    raw = make_raw()
    got = launch_of(mod, raw).pack(raw)
    assert got == [raw[0].data_ptr(), raw[1].data_ptr(), 11, 2**40, raw[3].data_ptr(), 0]
    raw2 = make_raw(1)  # new tensors, same metadata: the same plan, their pointers
    assert launch_of(mod, raw).pack(raw2)[:2] == [raw2[0].data_ptr(), raw2[1].data_ptr()]


def test_copy_slots_take_a_contiguous_copy(mod):
    """A copy slot (an argument the Python path's normalization makes contiguous) points at a
    new contiguous copy, not at the argument; its metadata is still checked."""
    raw = make_raw()
    raw = (raw[0], raw[1].t().contiguous().t(), None, raw[3])  # x with step stride 2
    launch = launch_of(mod, raw, copy=1)
    got = launch.pack(raw)
    assert got is not None and got[1] not in (0, raw[1].data_ptr()) and got[0] == raw[0].data_ptr()
    assert launch.pack(make_raw()) is None, "the plan was made for the strided x"


CHANGES = {
    "shape": lambda r: (r[0][:5], *r[1:]),
    "strides": lambda r: (r[0], r[1].t().contiguous().t(), *r[2:]),
    "dtype": lambda r: (r[0], r[1].float(), *r[2:]),
    "None given a tensor": lambda r: (*r[:2], torch.zeros(3), r[3]),
    "tensor given None": lambda r: (*r[:3], None),
    "requires_grad": lambda r: (r[0].requires_grad_(True), *r[1:]),
    "Parameter -> Tensor": lambda r: (*r[:3], r[3].detach()),
    "neg bit": lambda r: (r[0], r[1], r[2], torch.nn.Parameter(
        torch._neg_view(r[3].detach()), requires_grad=True)),
    "arity": lambda r: r[:3],
    "a float for a tensor": lambda r: (r[0], 1.0, *r[2:]),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_metadata_change_is_refused(mod, change):
    raw = make_raw()
    launch = launch_of(mod, raw)
    assert launch.pack(raw) is not None
    assert launch.pack(CHANGES[change](make_raw(1))) is None
    assert launch.run(CHANGES[change](make_raw(1)), False) is None


def test_conj_bit_is_refused(mod):
    raw = make_raw()
    c = torch.randn(4, dtype=torch.complex64)
    plan_raw = (*raw[:3], c)
    launch = launch_of(mod, plan_raw)
    assert launch.pack((*raw[:3], torch.randn(4, dtype=torch.complex64))) is not None
    assert launch.pack((*raw[:3], c.conj())) is None


def test_alignment_of_specialized_pointers(mod):
    raw = make_raw()
    base = torch.randn(2 * 4 + 1).to(torch.bfloat16)
    off = (raw[0], base[1:].view(2, 4), None, raw[3])  # x 2 bytes past a 16-byte boundary
    assert off[1].data_ptr() % 16 != 0
    assert launch_of(mod, raw, aligned=(1, 1, 1)).pack(off) is None, "kernel assumed aligned x"
    assert launch_of(mod, raw, aligned=(1, -1, 1)).pack(off) is not None
    assert launch_of(mod, raw, aligned=(1, 0, 1)).pack(raw) is None, \
        "a kernel made for a misaligned x: the aligned call takes the Python path to its own"


def test_bad_plans_are_rejected_at_construction(mod):
    raw = make_raw()

    class Sub(torch.Tensor):
        pass
    with pytest.raises(ValueError, match="Parameter"):
        launch_of(mod, (raw[0], raw[1].as_subclass(Sub), None, raw[3]))
    with pytest.raises(ValueError, match="None"):
        mod.Launch(raw, [0] * 6, [(0, 2, -1, 0)], [(5, 1, [2, 4], False)], 1, 0, lambda d: 0, 1,
                   [1, 1, 1], 32, 0)
    with pytest.raises(ValueError, match="too many"):
        mod.Launch(raw, [0] * 200, [], [(5, 1, [2, 4], False)], 1, 0, lambda d: 0, 1, [1, 1, 1],
                   32, 0)
    for outs in ([(9, 1, [2, 4], False)], [(5, 2, [2, 4], False)], [(5, 7, [2, 4], True)],
                 []):  # cell, like, none
        with pytest.raises(ValueError, match="out"):
            mod.Launch(raw, [0] * 6, [], outs, 1, 0, lambda d: 0, 1, [1, 1, 1], 32, 0)
    with pytest.raises(ValueError, match="device_like"):
        mod.Launch(raw, [0] * 6, [], [(5, -1, [3], False)], 2, 0, lambda d: 0, 1, [1, 1, 1],
                   32, 0)


def test_run_without_a_matching_cuda_context_launches_nothing(mod):
    """Here the plan's device is 0 and no CUDA context is current (or no driver at all)."""
    raw = make_raw()
    if mod.current_device() == 0:
        pytest.skip("a CUDA context on device 0 is current")
    assert launch_of(mod, raw).run(raw, False) is None


@settings(max_examples=60, deadline=None)
@given(ty=st.sampled_from(["i1", "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64"]),
       data=st.data())
def test_int_cells_are_twos_complement_of_their_width(ty, data):
    bits = {"i1": 1, "i8": 8, "i16": 16, "i32": 32, "i64": 64}.get(ty) or int(ty[1:])
    signed = ty[0] == "i" and ty != "i1"
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    v = data.draw(st.integers(lo, hi))
    c = fastcall.cell(ty, v)
    width = max(bits, 8)
    assert 0 <= c < (1 << width)
    assert (c - (1 << width) if signed and c >= 1 << (width - 1) else c) == v
    with pytest.raises(ValueError, match="does not fit"):
        fastcall.cell(ty, hi + 1)
    with pytest.raises(ValueError, match="does not fit"):
        fastcall.cell(ty, lo - 1)


def test_float_and_pointer_cells():
    assert fastcall.cell("fp32", 1.5) == struct.unpack("<I", struct.pack("<f", 1.5))[0]
    assert fastcall.cell("fp64", -2.25) == struct.unpack("<Q", struct.pack("<d", -2.25))[0]
    assert fastcall.cell("*bf16", 123) == 0
    with pytest.raises(ValueError, match="not supported"):
        fastcall.cell("nvTmaDesc", 0)


def test_module_builds_in_a_thread_and_plans_retry_until_it_is_done(monkeypatch):
    """A step plan asks for the module without waiting: while the build thread runs the plan
    keeps its Python launch and asks again on its next run; once the build is over (here: it
    failed, None) it stops asking."""
    import threading

    import ssmgen
    from ssmgen import step
    from test_step import make

    gate = threading.Event()
    built = []
    monkeypatch.setattr(fastcall, "_state", {})
    monkeypatch.setattr(fastcall, "_build", lambda: built.append(1) or gate.wait(10) and None)
    assert fastcall.module(wait=False) is None and fastcall.building()
    assert fastcall.module(wait=False) is None and len(built) == 1, "one build thread"

    step._plans.clear()
    c = dict(batch=2, heads=1, headdim=4, N=3, groups=1, complex=False, dtype=torch.float32,
             mamba2=False, indices=False, D=True, z=False, bias=False, softplus=False,
             complex_tensor=False, tie=False)
    try:
        for seed in range(2):  # the full path, then the plan's first run
            ssmgen.selective_state_update(*make(c, seed), backend="triton")
        (plan, *_), = step._plans._plans.values()
        assert not plan.fast_tried, "asked while building: ask again later"
        gate.set()
        assert fastcall.module() is None and not fastcall.building()
        ssmgen.selective_state_update(*make(c, 2), backend="triton")
        assert plan.fast_tried and step._plans.fast(("triton", False)) is None
    finally:
        gate.set()
        step._plans.clear()
