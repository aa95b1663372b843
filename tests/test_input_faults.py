"""Malformed and unusual inputs of selective_scan and selective_state_update (issue: Reliability,
item 1). Every call gives the float64 reference's result or raises ValueError / TypeError naming
the argument before anything is rendered or launched: inputs on another device, sparse / nested
layouts, odd strides and lazily conjugated views, empty and zero-length inputs, groups, d_state
bounds, complex / real mismatches, 32-bit offsets and grid limits (meta tensors: the shapes of a
huge problem without its memory), NaN / Inf (propagated like the reference), and two hypothesis
fuzzers of random malformed calls: the scan with its variants (initial_state, cu_seqlens,
reverse) and the decode step. The NaN / Inf tests of padded state lanes, padded timesteps and
packed sequences also check every gradient and the reverse scan, on each backend the machine runs."""
import os
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

import ssmgen
from ssmgen.backends import cuda_backend, triton_backend
from ssmgen.inputs import normalize
from ssmgen.numerics import assert_close
from ssmgen.reference import selective_scan_ref
from ssmgen.step import selective_state_update_ref

CFG = {"chunk_len": 16, "block_l": 4, "block_d": 2}
SCAN_ARGS = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state", "cu_seqlens"]
STEP_ARGS = ["state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state_batch_indices"]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SSMGEN_POISON", "1")


@pytest.fixture
def launches(monkeypatch):
    """Records every kernel rendered (scan and step, Triton): bad input must leave it empty."""
    seen = []
    for name in ("kernel", "step_kernel"):
        real = getattr(triton_backend, name)

        def watch(*a, _real=real, **k):
            seen.append(a)
            return _real(*a, **k)

        monkeypatch.setattr(triton_backend, name, watch)
    return seen


def scan_args(b=2, d=4, L=9, N=3, cplx=False, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    A = -0.5 * torch.rand(d, N, generator=g)
    if cplx:
        A = torch.complex(A, torch.randn(d, N, generator=g))
    Lbc = 2 * L if cplx else L
    return {"u": torch.randn(b, d, L, generator=g).to(dtype),
            "delta": (0.5 * torch.rand(b, d, L, generator=g)).to(dtype), "A": A,
            "B": torch.randn(b, 2, N, Lbc, generator=g).to(dtype),
            "C": torch.randn(b, N, Lbc, generator=g).to(dtype), "D": torch.randn(d, generator=g),
            "z": torch.randn(b, d, L, generator=g).to(dtype),
            "delta_bias": 0.1 * torch.rand(d, generator=g)}


def step_args(b=2, H=2, P=3, N=4, G=1, cplx=False, seed=0):
    """Mamba-2 shaped decode-step arguments (keyword form)."""
    g = torch.Generator().manual_seed(seed)
    sdt = torch.complex64 if cplx else torch.float32
    A = -0.5 * torch.rand(H, P, N, generator=g)
    if cplx:
        A = torch.complex(A, torch.randn(H, P, N, generator=g))
    n = 2 * N if cplx else N
    return {"state": torch.randn(b, H, P, N, generator=g).to(sdt),
            "x": torch.randn(b, H, P, generator=g), "dt": 0.5 * torch.rand(b, H, P, generator=g),
            "A": A, "B": torch.randn(b, G, n, generator=g), "C": torch.randn(b, G, n, generator=g),
            "D": torch.randn(H, P, generator=g), "z": torch.randn(b, H, P, generator=g),
            "dt_bias": 0.1 * torch.rand(H, P, generator=g)}


def names_an_argument(err, args) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", str(err)) for n in args)


def _leaves(a):
    # detach() keeps strides, storage offset and the conj / neg bits: the leaf IS the odd layout
    return {k: (v.detach().requires_grad_(True) if isinstance(v, torch.Tensor) and
                (v.is_floating_point() or v.is_complex()) else v) for k, v in a.items()}


def run_both(a, kw, backend="triton", config=CFG):
    """Kernel and reference on the same leaves: (out, last, grads) each."""
    res = []
    for fn in (lambda **k: ssmgen.selective_scan(**k, backend=backend, config=config),
               selective_scan_ref):
        leaves = _leaves(a)
        out, last = fn(**leaves, **kw, return_last_state=True)
        grad_in = [v for v in leaves.values() if isinstance(v, torch.Tensor) and v.requires_grad]
        gen = torch.Generator().manual_seed(3)
        dout = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)  # same for both
        dlast = torch.randn(last.shape, generator=gen, dtype=torch.complex64 if last.is_complex()
                            else torch.float32).to(last.device, last.dtype)
        grads = torch.autograd.grad([out, last], grad_in, [dout, dlast], allow_unused=True)
        res.append((out, last, grads))
    return res


# -- layouts that must give the reference's result -------------------------------------------
def _neg_view(t):  # a real tensor with the lazy negation bit set, equal in value to t
    v = torch.complex(torch.zeros_like(t), -t).conj().imag
    assert v.is_neg() and torch.equal(v, t)
    return v


LAYOUTS = [  # (label, complex A, mutation of the arguments, extra keywords)
    ("u transposed", False, lambda a: a.update(u=a["u"].transpose(1, 2).contiguous()
                                               .transpose(1, 2)), {}),
    ("u expanded over batch (stride 0)", False, lambda a: a.update(
        u=a["u"][:1].expand_as(a["u"])), {}),
    ("u every other batch row", False, lambda a: a.update(
        u=torch.cat([a["u"], a["u"]], 0)[::2]), {}),
    ("delta stride 2 along L", False, lambda a: a.update(
        delta=a["delta"].repeat_interleave(2, -1)[..., ::2]), {}),
    ("z batch and dim swapped in memory", False, lambda a: a.update(
        z=a["z"].transpose(0, 1).contiguous().transpose(0, 1)), {}),
    ("B (batch, groups, L, N) transposed", False, lambda a: a.update(
        B=a["B"].transpose(2, 3).contiguous().transpose(2, 3)), {}),
    ("B one group expanded to two", False, lambda a: a.update(B=a["B"][:, :1].expand_as(a["B"])),
     {}),
    ("C with a storage offset", False, lambda a: a.update(
        C=torch.cat([torch.zeros_like(a["C"][..., :3]), a["C"]], -1)[..., 3:]), {}),
    ("C stride 2 along d_state", False, lambda a: a.update(
        C=a["C"].repeat_interleave(2, 1)[:, ::2]), {}),
    ("D every other element", False, lambda a: a.update(D=a["D"].repeat_interleave(2)[::2]), {}),
    ("A transposed", False, lambda a: a.update(A=a["A"].t().contiguous().t()), {}),
    ("constant B transposed", False, lambda a: a.update(B=torch.randn(3, 4).t()), {}),
    ("u, B as lazily negated views", False, lambda a: a.update(u=_neg_view(a["u"]),
                                                               B=_neg_view(a["B"])), {}),
    ("initial_state transposed", False, lambda a: None,
     {"initial_state": torch.randn(2, 3, 4).transpose(1, 2)}),
    ("complex A conjugate view", True, lambda a: a.update(A=a["A"].conj().resolve_conj().conj()),
     {}),
    ("complex C as complex64, conjugate view", True, lambda a: a.update(
        C=torch.randn(2, 3, 9, dtype=torch.complex64).conj()), {}),
    ("complex B as complex64, transposed", True, lambda a: a.update(
        B=torch.randn(2, 2, 9, 3, dtype=torch.complex64).transpose(2, 3)), {}),
    ("complex constant B conjugate view", True, lambda a: a.update(
        B=torch.randn(4, 3, dtype=torch.complex64).conj()), {}),
    ("complex initial_state conjugate view", True, lambda a: None,
     {"initial_state": torch.randn(2, 4, 3, dtype=torch.complex64).conj()}),
]


@pytest.mark.interp
@pytest.mark.parametrize("label, cplx, mutate, kw", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_odd_strides_and_views_match_the_reference(launches, label, cplx, mutate, kw):
    a = scan_args(cplx=cplx)
    mutate(a)
    a.update(kw)
    (out, last, grads), (r_out, r_last, r_grads) = run_both(a, {"delta_softplus": True})
    assert launches, "the kernel did not run"
    assert_close("out", out, r_out, torch.float32)
    assert_close("last_state", last, r_last, torch.float32)
    for i, (g, r) in enumerate(zip(grads, r_grads)):
        assert_close(f"grad {i}", g, r, torch.float32)


# -- refused before launch, naming the argument ----------------------------------------------
def _every_arg(arg):
    """Arguments with every optional tensor present, one of initial_state and cu_seqlens."""
    a = scan_args(b=1)
    if arg == "initial_state":
        a["initial_state"] = torch.zeros(1, 4, 3)
    else:
        a["cu_seqlens"] = torch.tensor([0, 4, 9])
    return a


def _names_device_fault(err, arg):
    return "is on" in str(err) and re.search(rf"\b{arg}\b", str(err))


@pytest.mark.parametrize("arg", SCAN_ARGS)
def test_scan_input_on_another_device_is_named(launches, arg):
    a = _every_arg(arg)
    a[arg] = a[arg].to("meta")
    with pytest.raises(ValueError) as e:
        ssmgen.selective_scan(**a, backend="triton", config=CFG)
    assert _names_device_fault(e.value, arg), e.value
    assert not launches


@pytest.mark.parametrize("arg", STEP_ARGS)
def test_step_input_on_another_device_is_named(launches, arg):
    a = step_args()
    a["state_batch_indices"] = torch.tensor([1, 0])
    a[arg] = a[arg].to("meta")
    with pytest.raises(ValueError) as e:
        ssmgen.selective_state_update(**a, backend="triton")
    assert _names_device_fault(e.value, arg), e.value
    assert not launches


@pytest.mark.parametrize("arg", SCAN_ARGS)
def test_scan_sparse_input_is_refused(launches, arg):
    a = _every_arg(arg)
    a[arg] = a[arg].to_sparse()
    with pytest.raises(TypeError, match=rf"{arg} must be a dense \(strided\) tensor"):
        ssmgen.selective_scan(**a, backend="triton", config=CFG)
    assert not launches


@pytest.mark.parametrize("arg", STEP_ARGS)
def test_step_sparse_input_is_refused(launches, arg):
    a = step_args()
    a["state_batch_indices"] = torch.tensor([1, 0])
    a[arg] = a[arg].to_sparse()
    with pytest.raises(TypeError, match=rf"{arg} must be a dense \(strided\) tensor"):
        ssmgen.selective_state_update(**a, backend="triton")
    assert not launches


def test_nested_tensor_is_refused(launches):
    a = scan_args()
    a["u"] = torch.nested.nested_tensor([a["u"][0], a["u"][1]])
    with pytest.raises(TypeError, match=r"u must be a dense \(strided\) tensor, got a nested"):
        ssmgen.selective_scan(**a, backend="triton", config=CFG)
    assert not launches


SCAN_BAD = [  # (label, mutation, exception, message)
    ("batch 0", lambda a: a.update(u=a["u"][:0], delta=a["delta"][:0], z=a["z"][:0],
                                   B=a["B"][:0], C=a["C"][:0]), ValueError, r"u must be non-empty"),
    ("dim 0", lambda a: a.update(u=a["u"][:, :0], delta=a["delta"][:, :0], z=None,
                                 A=a["A"][:0], D=None, delta_bias=None), ValueError,
     r"u must be non-empty"),
    ("L 0", lambda a: a.update(u=a["u"][..., :0], delta=a["delta"][..., :0], z=a["z"][..., :0],
                               B=a["B"][..., :0], C=a["C"][..., :0]), ValueError,
     r"u must be non-empty"),
    ("d_state 0", lambda a: a.update(A=a["A"][:, :0], B=a["B"][:, :, :0], C=a["C"][:, :0]),
     ValueError, r"A: d_state must be in 1\.\.512, got 0"),
    ("d_state 513", lambda a: a.update(A=-torch.rand(4, 513)), ValueError,
     r"d_state must be in 1\.\.512, got 513"),
    ("C groups 3 of dim 4", lambda a: a.update(C=torch.randn(2, 3, 3, 9)), ValueError,
     r"C: groups=3 must divide dim=4"),
    ("B groups 0", lambda a: a.update(B=torch.randn(2, 0, 3, 9)), ValueError,
     r"B: groups=0 must divide dim=4"),
    ("complex constant B, real A", lambda a: a.update(B=torch.randn(4, 3, dtype=torch.complex64)),
     TypeError, r"constant B must be torch.float32"),
    ("u complex", lambda a: a.update(u=a["u"].to(torch.complex64)), TypeError, r"u must be"),
    ("u float64", lambda a: a.update(u=a["u"].double(), delta=a["delta"].double()), TypeError,
     r"u must be float32"),
    ("z bf16 with fp32 u", lambda a: a.update(z=a["z"].bfloat16()), TypeError,
     r"z must have u's dtype"),
    ("u 4-D", lambda a: a.update(u=a["u"][None]), ValueError, r"u must have shape"),
    ("A 3-D", lambda a: a.update(A=a["A"][None]), ValueError, r"A must have shape"),
    ("D a float", lambda a: a.update(D=1.0), TypeError, r"D must be a torch.Tensor"),
    ("delta_bias int", lambda a: a.update(delta_bias=torch.ones(4, dtype=torch.int64)),
     TypeError, r"delta_bias must be float32"),
    ("B length L + 1", lambda a: a.update(B=torch.randn(2, 2, 3, 10)), ValueError,
     r"variable B must have length L = 9"),
]


@pytest.mark.parametrize("label, mutate, exc, match", SCAN_BAD, ids=[x[0] for x in SCAN_BAD])
def test_scan_bad_input_is_named_before_launch(launches, label, mutate, exc, match):
    a = scan_args()
    mutate(a)
    with pytest.raises(exc, match=match):
        ssmgen.selective_scan(**a, backend="triton", config=CFG)
    assert not launches


def test_complex_mismatches():
    a = scan_args(cplx=True)
    a["B"] = torch.randn(4, 3)  # real constant B with complex A
    with pytest.raises(TypeError, match=r"constant B must be torch.complex64 \(like A\)"):
        ssmgen.selective_scan(**a, backend="reference")
    a = scan_args(cplx=True)
    a["C"] = torch.randn(2, 3, 9)  # real variable C of length L (needs 2L interleaved)
    with pytest.raises(ValueError, match=r"variable C must have interleaved .* = 18"):
        ssmgen.selective_scan(**a, backend="reference")
    a = scan_args(cplx=True)
    a["C"] = torch.randn(2, 3, 9, dtype=torch.complex128)
    with pytest.raises(TypeError, match=r"complex tensor C must be complex64"):
        ssmgen.selective_scan(**a, backend="reference")


STEP_BAD = [
    ("batch 0", lambda a: a.update(**{k: a[k][:0] for k in ("state", "x", "dt", "B", "C", "z")}),
     ValueError, r"x must be non-empty"),
    ("headdim 0", lambda a: a.update(state=a["state"][:, :, :0], x=a["x"][..., :0],
                                     dt=a["dt"][..., :0], A=a["A"][:, :0], z=None, D=None,
                                     dt_bias=None), ValueError, r"x must be non-empty"),
    ("d_state 0", lambda a: a.update(state=a["state"][..., :0], A=a["A"][..., :0],
                                     B=a["B"][..., :0], C=a["C"][..., :0]), ValueError,
     r"state: d_state must be in 1\.\.512, got 0"),
    ("d_state 513", lambda a: a.update(state=torch.zeros(2, 2, 3, 513)), ValueError,
     r"d_state must be in 1\.\.512, got 513"),
    ("groups 3 of heads 2", lambda a: a.update(B=torch.randn(2, 3, 4), C=torch.randn(2, 3, 4)),
     ValueError, r"groups=3 must divide heads=2"),
    ("B and C groups differ", lambda a: a.update(B=torch.randn(2, 2, 4)), ValueError,
     r"B and C must have the same groups"),
    ("complex B, real A", lambda a: a.update(B=torch.randn(2, 1, 4, dtype=torch.complex64)),
     TypeError, r"B is complex but A is real"),
    ("real state, complex A", lambda a: a.update(A=torch.complex(a["A"], a["A"])), TypeError,
     r"state must be torch.complex64"),
    ("x float64", lambda a: a.update(x=a["x"].double()), TypeError, r"x must be float32"),
    ("state float16", lambda a: a.update(state=a["state"].half()), TypeError,
     r"state must be torch.float32"),
    ("state transposed (d_state not unit stride)", lambda a: a.update(
        state=a["state"].transpose(2, 3).contiguous().transpose(2, 3)), ValueError,
     r"state must have unit stride along d_state"),
    ("indices float", lambda a: a.update(state_batch_indices=torch.tensor([0.0, 1.0])),
     ValueError, r"state_batch_indices must be an int32/int64"),
    ("dt_softplus not a bool", lambda a: a.update(dt_softplus="yes"), TypeError,
     r"dt_softplus must be a bool"),
    ("D (heads, headdim + 1)", lambda a: a.update(D=torch.randn(2, 4)), ValueError,
     r"D must have shape"),
    ("x 4-D", lambda a: a.update(x=a["x"][None]), ValueError, r"x must have 2 or 3 dims"),
]


@pytest.mark.parametrize("label, mutate, exc, match", STEP_BAD, ids=[x[0] for x in STEP_BAD])
def test_step_bad_input_is_named_before_launch(launches, label, mutate, exc, match):
    a = step_args()
    mutate(a)
    with pytest.raises(exc, match=match):
        ssmgen.selective_state_update(**a, backend="triton")
    assert not launches


@pytest.mark.interp
def test_zero_length_sequences_in_a_packed_batch():
    """Empty sequences at the start, middle and end of a packed batch: zero state, no output."""
    a = scan_args(b=1, L=9)
    cu = torch.tensor([0, 0, 4, 4, 9, 9])
    (out, last, grads), (r_out, r_last, r_grads) = run_both(
        a, {"cu_seqlens": cu, "delta_softplus": True})
    assert last.shape == (5, 4, 3)
    for i in (0, 2, 4):
        assert torch.equal(last[i], torch.zeros_like(last[i]))
    assert_close("out", out, r_out, torch.float32)
    assert_close("last_state", last, r_last, torch.float32)
    for i, (g, r) in enumerate(zip(grads, r_grads)):
        assert_close(f"grad {i}", g, r, torch.float32)


# -- 32-bit offsets and grid limits (meta tensors: no memory, nothing launched) ---------------
def _meta_scan(b, d, L, N, G=1, cplx=False, const_B=False):
    m = dict(device="meta")
    A = torch.empty(d, N, dtype=torch.complex64 if cplx else torch.float32, **m)
    Lbc = 2 * L if cplx else L
    B = torch.empty(d, N, dtype=A.dtype, **m) if const_B else torch.empty(b, G, N, Lbc, **m)
    return dict(u=torch.empty(b, d, L, **m), delta=torch.empty(b, d, L, **m), A=A, B=B,
                C=torch.empty(b, N, Lbc, **m))


def test_batch_past_the_grid_limit_is_refused_by_both_backends(launches):
    call = normalize(**_meta_scan(65536, 2, 4, 2))
    for mod in (triton_backend, cuda_backend):
        with pytest.raises(ValueError, match=r"u: batch=65536 exceeds"):
            mod.check_launch(call)
    mod_ok = normalize(**_meta_scan(65535, 2, 4, 2))
    triton_backend.check_launch(mod_ok)
    cuda_backend.check_launch(mod_ok)


def test_many_channels_fit_the_grid(launches):
    """Channels go in grid x (limit 2**31 - 1), batch rows in grid y (65535): 2**20 channels
    (far past 65535) pass every check; under the interpreter the fake op runs on the meta
    tensors (nothing launched). On an H100, 70000 channels ran on both backends and matched the
    reference (the audit's GPU check)."""
    a = _meta_scan(1, 2**20, 8, 2)
    call = normalize(**a)
    triton_backend.check_launch(call)
    cuda_backend.check_launch(call)
    if os.environ.get("TRITON_INTERPRET") == "1":  # backend="triton" takes meta tensors there
        out = ssmgen.selective_scan(**a, backend="triton", config=CFG)
        assert out.shape == (1, 2**20, 8) and not launches


@pytest.mark.interp  # meta tensors reach the Triton backend only under the interpreter
def test_triton_refuses_A_and_constant_BC_offsets_past_32_bits(launches):
    a = _meta_scan(1, 2**22 + 64, 4, 512, const_B=True)  # A: 2**31 + 32768 elements
    with pytest.raises(ValueError, match=r"\bA\b"):
        ssmgen.selective_scan(**a, backend="triton", config=CFG)


def _meta_step(b, H, P, N, device="meta"):
    """Step arguments without memory (meta: the interpreter), or small CUDA ones on a GPU."""
    m = dict(device=device)
    return dict(state=torch.empty(b, H, P, N, **m), x=torch.empty(b, H, P, **m),
                dt=torch.empty(b, H, P, **m), A=torch.empty(H, P, N, **m),
                B=torch.empty(b, 1, N, **m), C=torch.empty(b, 1, N, **m))


@pytest.fixture
def no_step_launch(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the step kernel was rendered: the call should have been refused")
    monkeypatch.setattr(triton_backend, "step_kernel", boom)


SMALL_DEV = "cuda" if torch.cuda.is_available() else "meta"


def test_step_batch_past_the_grid_limit_is_refused(no_step_launch):
    with pytest.raises(ValueError, match=r"batch=65536 exceeds"):
        ssmgen.selective_state_update(**_meta_step(65536, 1, 2, 2, SMALL_DEV), backend="triton")


def test_step_heads_past_the_grid_limit_are_refused(no_step_launch):
    # on an H100 this launch fails inside Triton: "Triton Error [CUDA]: invalid argument"
    with pytest.raises(ValueError, match=r"heads=65536"):
        ssmgen.selective_state_update(**_meta_step(1, 65536, 1, 2, SMALL_DEV), backend="triton")


@pytest.mark.interp  # meta tensors reach the Triton backend only under the interpreter
def test_step_offsets_past_32_bits_are_refused(no_step_launch):
    # on an H100 this launch is an illegal memory access (the CUDA step is right: 64-bit offsets)
    with pytest.raises(ValueError, match=r"\b(state|A)\b.*2\*\*31|32 bits"):
        ssmgen.selective_state_update(**_meta_step(1, 2**12 + 1, 2**10, 512), backend="triton")


# -- NaN / Inf: propagated like the reference, never a hang ----------------------------------
@pytest.mark.interp
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")],
                         ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("arg", ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"])
def test_nonfinite_inputs_propagate_like_the_reference(value, arg):
    """One non-finite element in one argument. The output and the last state are non-finite
    exactly where the reference's are (equal elsewhere; a NaN input gives NaN exactly where the
    reference has NaN); every gradient entry that is non-finite in the reference is non-finite in
    the kernel's (no NaN is hidden). NaN may stand where the reference has an Inf for Inf inputs:
    the parallel scan multiplies an infinite cumulative decay by a zero start state where the
    sequential reference never does. L = 8 is a multiple of block_l (padded time lanes: the -inf
    A tests below); d_state 3 pads the state axis to 4 (the infinite u tests below)."""
    a = scan_args(b=1, L=8)
    t = a[arg].clone()
    t.view(-1)[1] = value
    a[arg] = t
    (out, last, grads), (r_out, r_last, r_grads) = run_both(a, {"delta_softplus": False})
    for name, g, r in (("out", out, r_out), ("last_state", last, r_last)):
        fin = torch.isfinite(r)
        assert torch.equal(torch.isfinite(g), fin), f"{name}: non-finite pattern differs"
        if value != value:  # NaN in: NaN out exactly where the reference has it
            assert torch.equal(torch.isnan(g), torch.isnan(r)), f"{name}: NaN pattern differs"
        if fin.any():
            assert_close(name, g[fin], r[fin], torch.float32)
    for i, (g, r) in enumerate(zip(grads, r_grads)):
        hidden = ~torch.isfinite(r) & torch.isfinite(g)
        assert not hidden.any(), f"grad {i}: {int(hidden.sum())} entries finite in the kernel " \
                                 f"but not in the reference"


@pytest.mark.interp
def test_infinite_u_with_padded_state_lanes_gives_the_reference_infinities():
    """d_state 3: the Triton tile pads the state axis to 4 (B, C, A load 0 there), so an
    infinite u gives inf * 0 = NaN in the padded lane; the sums over states leave it out."""
    a = scan_args(b=1, L=8, N=3)
    a["u"] = a["u"].clone()
    a["u"][0, 0, 1] = float("inf")
    out = ssmgen.selective_scan(**a, backend="triton", config=CFG)
    ref = selective_scan_ref(**a)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))


@pytest.mark.interp
def test_minus_inf_A_with_padded_lanes_gives_the_reference_last_state():
    """Padded timesteps past L (dt = 0) decay by 1, not exp2(0 * -inf) = NaN."""
    a = scan_args(b=1, L=6)  # 6 steps in blocks of 4: 2 padded lanes
    a["A"] = a["A"].clone()
    a["A"][0, 1] = -float("inf")
    out, last = ssmgen.selective_scan(**a, return_last_state=True, backend="triton", config=CFG)
    r_out, r_last = selective_scan_ref(**a, return_last_state=True)
    assert torch.isfinite(r_last).all()
    assert torch.isfinite(last).all(), "NaN from a padded lane reached the last state"


@pytest.mark.interp
def test_nonfinite_step_inputs_propagate_like_the_reference():
    for arg in ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias"):
        for value in (float("nan"), float("inf")):
            a = step_args(b=1, H=1, P=2, N=2)
            t = a[arg].clone()
            t.view(-1)[0] = value
            a[arg] = t
            y_ref, rows_ref = selective_state_update_ref(**a)
            y = ssmgen.selective_state_update(**a, backend="triton")
            for name, g, r in (("out", y, y_ref), ("state", a["state"], rows_ref)):
                assert torch.equal(torch.isnan(g), torch.isnan(r)), f"{arg}={value}: {name} NaN"
                fin = torch.isfinite(r)
                assert torch.equal(torch.isfinite(g), fin), f"{arg}={value}: {name} pattern"


@pytest.mark.interp
def test_nonfinite_packed_sequence_does_not_leak_into_the_next():
    """A packed batch drops the state at a sequence start by a select (a segmented scan), not
    by a zero decay: 0 * NaN = NaN would carry a NaN state into every later sequence."""
    a = scan_args(b=1, L=8, N=2)
    a["u"] = a["u"].clone()
    a["u"][0, 0, 1] = float("nan")  # in the first of two sequences
    cu = torch.tensor([0, 3, 8])
    out, last = ssmgen.selective_scan(**a, cu_seqlens=cu, return_last_state=True,
                                      backend="triton", config=CFG)
    ref, r_last = selective_scan_ref(**a, cu_seqlens=cu, return_last_state=True)
    assert torch.isfinite(ref[..., 3:]).all() and torch.isfinite(r_last[1]).all()
    assert torch.isfinite(out[..., 3:]).all(), "the NaN of sequence 0 reached sequence 1"
    assert torch.isfinite(last[1]).all()


# The three fixes above, with their gradients and reverse scans, on every backend this machine
# runs (here the Triton interpreter; on a GPU Triton and CUDA): every output, last state and
# gradient entry is finite exactly where the float64 reference's is, and close to it there.
HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ["triton", "cuda"] if HAS_CUDA else ["triton"]
# block_l / tl 4: L = 6 or 11 leaves padded timesteps; lpc 2 pads d_state 3 to 4 (K = 2) on CUDA
BACKEND_CFG = {"triton": CFG, "cuda": {"chunk_len": 16, "threads": 32, "lpc": 2, "tl": 4, "tb": 2}}


def _finite_like_the_reference(a, kw, backend, same_nan=(), skip=None):
    """same_nan: names whose NaN pattern must be the reference's too; skip: {name: index} of one
    entry left out of the comparison (a known limit, see the caller)."""
    a = {k: (v.to(DEV) if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    (out, last, grads), (r_out, r_last, r_grads) = run_both(a, kw, backend, BACKEND_CFG[backend])
    names = [k for k, v in a.items() if isinstance(v, torch.Tensor) and
             (v.is_floating_point() or v.is_complex())]
    assert len(names) == len(grads)
    for name, g, r in [("out", out, r_out), ("last_state", last, r_last)] + list(
            zip(names, grads, r_grads)):
        g, r = g.detach(), r.detach()
        if name in (skip or {}):
            g, r = g.clone(), r.clone()
            g[skip[name]] = r[skip[name]] = 0
        if name in same_nan:
            assert torch.equal(torch.isnan(g), torch.isnan(r)), f"{name}: NaN pattern differs"
        fin = torch.isfinite(r)
        lost = fin & ~torch.isfinite(g)
        assert not lost.any(), f"{name}: non-finite at {lost.nonzero().tolist()} where the " \
                               f"reference is finite"
        hidden = ~fin & torch.isfinite(g)
        assert not hidden.any(), f"{name}: finite at {hidden.nonzero().tolist()} where the " \
                                 f"reference is not"
        if fin.any():
            gg, rr = g[fin].to(torch.complex128), r[fin].to(torch.complex128)
            assert torch.allclose(gg, rr, rtol=1e-3, atol=1e-3 * max(1.0, rr.abs().max().item())), \
                f"{name} differs from the reference"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_infinite_u_with_padded_state_lanes_gradients_like_the_reference(backend, cplx, reverse):
    a = scan_args(b=1, L=8, N=3, cplx=cplx)
    a["u"] = a["u"].clone()
    a["u"][0, 0, 2] = float("inf")
    _finite_like_the_reference(a, {"reverse": reverse}, backend, same_nan=("out", "last_state"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_infinite_delta_with_padded_state_lanes_gradients_like_the_reference(backend, reverse):
    """An infinite delta makes the padded lanes' decay exp2(inf * 0) = NaN, which the adjoint
    carries to the earlier steps: their du (sum over states of g B) stays finite. Left out: the
    delta gradient at the infinite step itself, where the Triton backward recovers dA x_{t-1} as
    x_t - B dt u = inf - inf (the reference's is finite, with or without padded lanes)."""
    a = scan_args(b=1, L=8, N=3)
    a["delta"] = a["delta"].clone()
    a["delta"][0, 0, 2] = float("inf")
    _finite_like_the_reference(a, {"reverse": reverse}, backend,
                               skip={"delta": (0, 0, 2)} if backend == "triton" else None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cplx", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_minus_inf_A_with_padded_lanes_gradients_like_the_reference(backend, cplx, reverse):
    a = scan_args(b=1, L=6, cplx=cplx)  # 6 steps in blocks of 4: 2 padded lanes
    a["A"] = a["A"].clone()
    a["A"][0, 1] = -float("inf")
    _finite_like_the_reference(a, {"reverse": reverse, "delta_softplus": True}, backend)


# cu_seqlens [0, 4, 7, 11], L = 11: a sequence starts at the first step of a block and one inside
# a block, in scan order both forward and reverse (scan steps 4 and 7 reverse), and one padded
# step. Each poisoned step is inside its sequence (neither its first nor its last step).
PACKED_CU = [0, 4, 7, 11]
PACKED_STEP = {0: 2, 1: 5, 2: 8}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("seq", [0, 1, 2])
@pytest.mark.parametrize("arg,value,cplx", [
    ("u", float("nan"), False), ("u", float("nan"), True),  # a NaN state
    ("C", float("inf"), False),  # an infinite adjoint (backward: g_t = dy_t C_t + ...)
    ("delta", float("nan"), False),  # a NaN decay
], ids=["u-nan", "u-nan-complex", "C-inf", "delta-nan"])
def test_nonfinite_packed_sequence_gradients_stay_in_their_sequence(backend, reverse, seq, arg,
                                                                    value, cplx):
    """A non-finite value inside one packed sequence: the other sequences' outputs, last states
    and gradients are finite like the reference's (the state crosses no sequence start forward,
    the adjoint none backward)."""
    a = scan_args(b=1, L=11, N=3, cplx=cplx)
    t = PACKED_STEP[seq]
    x = a[arg].clone()
    if arg == "C" and cplx:
        t = 2 * t  # interleaved (re, im)
    x[0, ..., t] = value  # every channel (u, delta) or state (C)
    a[arg] = x
    a["cu_seqlens"] = torch.tensor(PACKED_CU)
    _finite_like_the_reference(a, {"reverse": reverse}, backend)


# -- known gaps of the decode step's validation (ssmgen/step.py) -----------------------------
def test_step_conjugate_view_B_matches_the_reference():
    a = step_args(cplx=True)
    a["B"] = torch.randn(2, 1, 4, dtype=torch.complex64).conj()
    y_ref, _ = selective_state_update_ref(**{k: (v.resolve_conj() if k == "B" else v)
                                             for k, v in a.items()})
    y = ssmgen.selective_state_update(**a, backend="reference")
    assert_close("out", y, y_ref, torch.float32)


@pytest.mark.interp
def test_step_strided_state_batch_indices_pick_the_right_rows():
    a = step_args()
    a["state"] = torch.cat([a["state"], a["state"]], 0)
    a["state_batch_indices"] = torch.tensor([3, 3, -1, -1])[::2]  # [3, -1], stride 2
    before = a["state"].clone()
    y_ref, rows = selective_state_update_ref(**a)
    y = ssmgen.selective_state_update(**a, backend="triton")
    assert (y[1] == 0).all(), "row 1 is a padding slot"
    assert_close("out", y[0], y_ref[0], torch.float32)
    assert_close("state row 3", a["state"][3], rows[0], torch.float32)
    assert torch.equal(a["state"][:3], before[:3])


def test_step_reference_backend_index_past_the_pool_gives_nan():
    a = step_args()
    a["state_batch_indices"] = torch.tensor([0, 5])  # a pool of 2
    y = ssmgen.selective_state_update(**a, backend="reference")
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()


def test_step_state_with_overlapping_rows_is_refused(no_step_launch):
    a = step_args()
    a["state"] = a["state"][:1].expand_as(a["state"])
    with pytest.raises(ValueError, match=r"state"):
        ssmgen.selective_state_update(**a, backend="triton")


# -- hypothesis fuzzers ----------------------------------------------------------------------
def _fill(t, value):
    """value at a fifth of the elements, the same ones every time (hypothesis replays)."""
    if not (t.is_floating_point() or t.is_complex()):
        return t
    return t.masked_fill(torch.rand(t.shape, generator=torch.Generator().manual_seed(7)) < 0.2,
                         value)


MUTATIONS = [
    ("drop-dim", lambda t: (t[0] if t.shape[0] else t.flatten(0, 1)) if t.dim() > 1 else t[None]),
    ("add-dim", lambda t: t[None]),
    ("shrink-last", lambda t: t[..., :-1]),
    ("grow-first", lambda t: torch.cat([t, t[:1]], 0)),
    ("to-int", lambda t: (t.real if t.is_complex() else t).to(torch.int32)),
    ("to-int64", lambda t: (t.real if t.is_complex() else t).to(torch.int64)),
    ("to-double", lambda t: t.to(torch.complex128) if t.is_complex() else t.double()),
    ("to-bf16", lambda t: (t.real if t.is_complex() else t).bfloat16()),
    ("to-complex", lambda t: t if t.is_complex() else t.to(torch.complex64)),
    ("conj", lambda t: t.conj() if t.is_complex() else t),
    ("meta-device", lambda t: t.to("meta")),
    ("sparse", lambda t: t.to_sparse()),
    ("empty", lambda t: t[..., :0]),
    ("empty-first", lambda t: t[:0]),
    ("transpose", lambda t: t.transpose(0, -1) if t.dim() > 1 else t),
    ("strided", lambda t: t.repeat_interleave(2, -1)[..., ::2]),
    ("expand", lambda t: t[:1].expand(t.shape) if t.dim() > 1 else t),
    ("nan", lambda t: _fill(t, float("nan"))),
    ("inf", lambda t: _fill(t, float("inf"))),
    ("list", lambda t: t.tolist()),
    ("scalar", lambda t: 1.5),
    ("none", lambda t: None),
]


def _apply(a, muts, args):
    labels = []
    for name, (label, f) in muts:
        t = a.get(name)
        if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.layout != torch.strided:
            continue  # already broken beyond what a second mutation can apply to
        a[name] = f(t)
        labels.append(f"{name}:{label}")
    return labels


def _close_or_same_nonfinite(name, g, r, labels):
    """Non-finite exactly where the reference is (NaN exactly where it has NaN, unless an Inf
    went in: see test_nonfinite_inputs_propagate_like_the_reference), close elsewhere."""
    g, r = g.detach(), r.detach()
    assert g.shape == r.shape, f"{labels}: {name} shape"
    assert torch.equal(torch.isfinite(g), torch.isfinite(r)), f"{labels}: {name} non-finite " \
                                                              f"pattern differs"
    if not any(label.endswith(":inf") for label in labels):
        assert torch.equal(torch.isnan(g), torch.isnan(r)), f"{labels}: {name} NaN pattern"
    ok = torch.isfinite(r)
    if ok.any():
        tol = 2e-2 if g.dtype in (torch.float16, torch.bfloat16) else 1e-3
        gg, rr = g[ok].to(torch.complex128), r[ok].to(torch.complex128)
        assert torch.allclose(gg, rr, rtol=tol, atol=tol * max(1.0, rr.abs().max().item())), \
            f"{labels}: {name} differs from the reference"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cplx=st.booleans(), seed=st.integers(0, 1000), variant=st.sampled_from(
           ["plain", "initial_state", "cu_seqlens", "reverse"]),
       muts=st.lists(st.tuples(st.sampled_from(SCAN_ARGS), st.sampled_from(MUTATIONS)),
                     min_size=1, max_size=2),
       softplus=st.booleans())
@pytest.mark.interp
def test_fuzz_scan_variants(launches, cplx, seed, variant, muts, softplus):
    # L = 7: one padded time lane (block_l 4); d_state 3: one padded state lane
    a = scan_args(b=1 if variant == "cu_seqlens" else 2, L=7, N=3, cplx=cplx, seed=seed)
    kw = {"delta_softplus": softplus}
    if variant == "initial_state":
        a["initial_state"] = torch.randn(2, 4, 3, dtype=a["A"].dtype)
    elif variant == "cu_seqlens":
        a["cu_seqlens"] = torch.tensor([0, 3, 3, 7])
    elif variant == "reverse":
        kw["reverse"] = True
    labels = _apply(a, muts, SCAN_ARGS)
    launches.clear()
    try:
        out, last = ssmgen.selective_scan(**a, **kw, return_last_state=True, backend="triton",
                                          config=CFG)
    except (ValueError, TypeError) as e:
        event("refused")
        assert not launches, f"{labels}: a kernel was rendered before the error {e}"
        assert names_an_argument(e, SCAN_ARGS + ["config", "batch", "groups", "d_state"]), \
            f"{labels}: the error does not name an argument: {e}"
        return
    event("ran")
    ref, r_last = selective_scan_ref(**a, **kw, return_last_state=True)
    _close_or_same_nonfinite("out", out, ref, labels)
    _close_or_same_nonfinite("last_state", last, r_last, labels)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cplx=st.booleans(), seed=st.integers(0, 1000), mamba2=st.booleans(),
       indices=st.booleans(),
       muts=st.lists(st.tuples(st.sampled_from(STEP_ARGS), st.sampled_from(
           [m for m in MUTATIONS if m[0] not in ("expand", "conj")])),  # the two known gaps above
           min_size=1, max_size=2),
       softplus=st.booleans())
@pytest.mark.interp
def test_fuzz_decode_step(launches, cplx, seed, mamba2, indices, muts, softplus):
    a = step_args(H=2 if mamba2 else 1, P=3, N=2, cplx=cplx, seed=seed)
    if not mamba2:  # Mamba-1 shapes: no heads axis
        a = {k: (v.squeeze(1) if k in ("state", "x", "dt", "z", "B", "C") else
                 v.squeeze(0) if k in ("A", "D", "dt_bias") else v) for k, v in a.items()}
    if indices:
        a["state"] = torch.cat([a["state"], a["state"]], 0)  # a pool of 4 rows
        a["state_batch_indices"] = torch.tensor([3, -1])
    a["dt_softplus"] = softplus
    labels = _apply(a, muts, STEP_ARGS)

    idx = a.get("state_batch_indices")
    if isinstance(idx, torch.Tensor) and idx.device.type == "cpu" and idx.layout == torch.strided \
            and not (idx.is_floating_point() or idx.is_complex()):
        live = idx[idx >= 0]  # two rows updating one state: undefined (unchecked: a device sync)
        assume(live.unique().numel() == live.numel())
    state = a["state"]
    before = state.clone() if isinstance(state, torch.Tensor) and state.layout == torch.strided \
        and state.device.type != "meta" else None
    launches.clear()
    try:
        y = ssmgen.selective_state_update(**a, backend="triton")
    except (ValueError, TypeError) as e:
        event("refused")
        assert not launches, f"{labels}: a kernel was rendered before the error {e}"
        assert names_an_argument(e, STEP_ARGS + ["dt_softplus", "heads", "d_state"]), \
            f"{labels}: the error does not name an argument: {e}"
        if before is not None:
            assert torch.equal(state, before) or torch.equal(torch.isnan(state),
                                                             torch.isnan(before))
        return
    event("ran")
    idx = a.get("state_batch_indices")
    if idx is None:
        y_ref, rows = selective_state_update_ref(**dict(a, state=before))
        _close_or_same_nonfinite("out", y, y_ref, labels)
        _close_or_same_nonfinite("state", state, rows, labels)
        return
    # a padding slot (< 0) gives 0; an index past the pool gives NaN and writes nothing
    pool = before.shape[0]
    live, past = (idx >= 0) & (idx < pool), idx >= pool
    assert torch.isnan(y[past]).all() and (y[idx < 0] == 0).all(), labels
    untouched = torch.ones(pool, dtype=torch.bool)
    untouched[idx[live]] = False
    assert torch.equal(state[untouched].isnan(), before[untouched].isnan())
    assert torch.equal(state[untouched].nan_to_num(), before[untouched].nan_to_num()), labels
    if live.any():  # the reference on the live rows alone
        per_row = {"x", "dt", "z", "B", "C"}
        sub = {k: (v[live] if k in per_row and isinstance(v, torch.Tensor) else v)
               for k, v in a.items()}
        sub.update(state=before, state_batch_indices=idx[live])
        y_ref, rows = selective_state_update_ref(**sub)
        _close_or_same_nonfinite("out", y[live], y_ref, labels)
        _close_or_same_nonfinite("state rows", state[idx[live]], rows, labels)
