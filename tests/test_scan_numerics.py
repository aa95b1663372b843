"""Property tests: ssmgen.selective_scan (Triton and CUDA backends) against the float64
reference.

Output, last state and every gradient (the last state's too), over specs, variants (initial
state, reverse, packed sequences) and shapes drawn by hypothesis. On a CPU
machine the kernels run through Triton's interpreter (`interp` tests, small shapes); the `gpu`
tests run the same property on CUDA tensors with larger shapes.
"""
import pytest
import torch
from hypothesis import given, seed, strategies as st

import ssmgen
from ssmgen.reference import selective_scan_ref
from cases import config_of, make_inputs, make_variants, scan_cases
from ssmgen.numerics import assert_close

NAMES = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    # every buffer a kernel must write starts as NaN, so an unwritten element fails the check
    monkeypatch.setenv("SSMGEN_POISON", "1")


def check_case(c: dict, device: str, seed_: int):
    inputs = make_inputs(c, device, seed_)
    variants = make_variants(c, device, seed_)
    h0 = variants.pop("initial_state", None)
    kw = dict(delta_softplus=c["delta_softplus"], return_last_state=c["return_last_state"],
              **variants)
    names = NAMES + ["initial_state"]
    inputs = inputs + [h0]

    def leaves_of():
        return [x.detach().clone().requires_grad_(True) if x is not None else None
                for x in inputs]

    leaves, ref_leaves = leaves_of(), leaves_of()
    res = ssmgen.selective_scan(*leaves[:8], initial_state=leaves[8], **kw,
                                backend=c.get("backend", "triton"), config=config_of(c))
    ref = selective_scan_ref(*ref_leaves[:8], initial_state=ref_leaves[8], **kw)
    out, last = res if c["return_last_state"] else (res, None)
    rout, rlast = ref if c["return_last_state"] else (ref, None)
    assert out.dtype == inputs[0].dtype and out.shape == inputs[0].shape
    dt = c["dtype"]
    assert_close("out", out, rout, dt)
    gen = torch.Generator().manual_seed(seed_ + 1)
    outs, routs = [out], [rout]
    grads_out = [torch.randn(out.shape, generator=gen).to(device=device, dtype=dt)]
    if last is not None:
        assert last.dtype == (torch.complex64 if c["complex"] else torch.float32)
        assert_close("last_state", last, rlast, dt)
        # the last state is differentiable: its gradient flows back into every input
        outs.append(last)
        routs.append(rlast)
        grads_out.append(torch.randn(last.shape, dtype=last.dtype, generator=gen).to(device))
    want = [i for i, x in enumerate(leaves) if x is not None]
    grads = torch.autograd.grad(outs, [leaves[i] for i in want], grads_out)
    rgrads = torch.autograd.grad(routs, [ref_leaves[i] for i in want],
                                 [g.to(r.dtype) for g, r in zip(grads_out, routs)])
    for i, g, r in zip(want, grads, rgrads):
        assert g.dtype == inputs[i].dtype, f"d{names[i]}: dtype {g.dtype} != {inputs[i].dtype}"
        assert_close("d" + names[i], g, r, dt)


@pytest.mark.interp
@given(c=scan_cases(), seed_=st.integers(0, 2**31 - 1))
def test_matches_reference_interpreter(c, seed_):
    check_case(c, "cpu", seed_)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cplx", [False, True])
def test_matches_reference_cuda(dtype, cplx, backend):
    # split by dtype and A form so that progress shows (each example compiles new kernels)
    @given(c=scan_cases(big=True, dtype=dtype, cplx=cplx, backend=backend),
           seed_=st.integers(0, 2**31 - 1))
    def prop(c, seed_):
        check_case(c, "cuda", seed_)

    prop()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cplx", [False, True])
def test_suite_like_shape_cuda(dtype, cplx, backend):
    """One larger shape per dtype/A form with all options: many chunks and long decays."""
    kcfg = ({"fwd": {"block_l": 32, "block_d": 4}, "bwd": {"block_l": 32, "block_d": 2}}
            if backend == "triton" else {"fwd": {"threads": 128, "lpc": 4, "tl": 32},
                                         "bwd": {"threads": 64, "lpc": 8, "tl": 32, "tb": 4}})
    c = dict(dtype=dtype, complex=cplx, N=16, chunk_len=256, L=1000, batch=2, dim=64,
             backend=backend, **kcfg,
             B="var4", B_groups=1, B_complex_tensor=False, C="var4", C_groups=1,
             C_complex_tensor=False, D=True, z=True, delta_bias=True, delta_softplus=True,
             return_last_state=True, noncontig=False)
    check_case(c, "cuda", 1234)


_SPLIT_BASE = dict(N=16, chunk_len=32, L=300, batch=2, dim=40, backend="cuda",
                   fwd={"threads": 128, "lpc": 4, "tl": 32, "splits": 4},
                   bwd={"threads": 64, "lpc": 8, "tl": 32, "tb": 4, "splits": 4},
                   B="var4", B_groups=1, B_complex_tensor=False, C="var4", C_groups=1,
                   C_complex_tensor=False, D=True, z=True, delta_bias=True,
                   delta_softplus=True, return_last_state=True, noncontig=False)
# 10 chunks in splits of 3 (boundaries at steps 96, 192, 288); packed sequences end inside
# splits and exactly at one
_SPLIT_CASES = {
    "bf16": dict(dtype=torch.bfloat16, complex=False),
    "bf16-reverse-h0": dict(dtype=torch.bfloat16, complex=False, reverse=True,
                            initial_state=True),
    "fp32-varlen-h0": dict(dtype=torch.float32, complex=False, batch=1, varlen=True,
                           cu_seqlens=[0, 50, 50, 96, 131, 300], initial_state=True),
    "fp32-varlen-reverse": dict(dtype=torch.float32, complex=False, batch=1, varlen=True,
                                cu_seqlens=[0, 96, 131, 250, 300], reverse=True),
    "complex-h0": dict(dtype=torch.float32, complex=True, initial_state=True),
    "complex-varlen-h0": dict(dtype=torch.float32, complex=True, batch=1, varlen=True,
                              cu_seqlens=[0, 100, 192, 300], initial_state=True),
    "constant-BC-more-splits-than-chunks": dict(
        dtype=torch.float32, complex=False, B="constant", C="constant",
        fwd={"threads": 64, "lpc": 4, "tl": 16, "splits": 32},
        bwd={"threads": 64, "lpc": 4, "tl": 16, "tb": 8, "splits": 16}),
    "deterministic-groups": dict(dtype=torch.bfloat16, complex=False, B_groups=2, C_groups=4,
                                 deterministic=True),
    # the forward's states as runs interleaved over lanes (cuda_backend.state_run, macro sn):
    # K 8 in runs of 4 and K 6 in runs of 2, through initial states, packed sequences, the
    # splits' end states and decays, and the last states
    "state-runs-of-4-varlen-h0": dict(dtype=torch.bfloat16, complex=False, batch=1,
                                      varlen=True, cu_seqlens=[0, 50, 96, 200, 300],
                                      initial_state=True,
                                      fwd={"threads": 64, "lpc": 2, "tl": 32, "splits": 4}),
    "state-runs-of-2-complex-h0": dict(dtype=torch.float32, complex=True, N=12,
                                       initial_state=True,
                                       fwd={"threads": 64, "lpc": 2, "tl": 32, "splits": 4}),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_SPLIT_CASES))
def test_split_sequences_match_reference(name, monkeypatch):
    """CUDA with the sequence cut into splits (pre-pass, carry-in, per-split partials): output,
    last state and every gradient against the float64 reference, over the variants whose
    state or adjoint crosses a split differently (start states, direction, packed sequences,
    complex decays, constant B/C, deterministic dB/dC)."""
    c = dict(_SPLIT_BASE, **_SPLIT_CASES[name])
    monkeypatch.setenv("SSMGEN_DETERMINISTIC", "1" if c.pop("deterministic", False) else "0")
    check_case(c, "cuda", 4321)


# The sums over a channel's lanes (cuda_backend.scatter_rounds: halving rounds, then plain ones)
# in the backward (per sub-tile) and in the forward past 4 lanes (per group of 8 steps, the
# last group of a sequence partial: L 205), and the backward's step-major dB / dC reductions
# (vector reds, padded states in padding columns): 32 / 16 / 8 / 4 / 2 / 1 lanes per channel,
# sub-tiles of 8 / 4 / 2 / 1 steps, N 17 (NP 20) with two groups, N 6 complex (rows 2L),
# reverse, packed sequences with initial states, and a deterministic run (canonical layout)
_SUM_BASE = dict(_SPLIT_BASE, L=200, chunk_len=64, fwd={"threads": 128, "lpc": 4, "tl": 32})
_SUM_CASES = {
    "n128-lpc32-tb8": dict(dtype=torch.bfloat16, complex=False, N=128, batch=1, dim=12, L=205,
                           fwd={"threads": 128, "lpc": 32, "tl": 32},
                           bwd={"threads": 128, "lpc": 32, "tl": 32, "tb": 8}),
    "n64-fwd-lpc16-varlen-h0": dict(dtype=torch.float32, complex=False, N=64, batch=1, dim=20,
                                    varlen=True, cu_seqlens=[0, 37, 37, 150, 200],
                                    initial_state=True,
                                    fwd={"threads": 256, "lpc": 16, "tl": 16},
                                    bwd={"threads": 128, "lpc": 16, "tl": 16, "tb": 4}),
    "n17-lpc4-tb4-groups2": dict(dtype=torch.float32, complex=False, N=17, B_groups=2,
                                 C_groups=2, bwd={"threads": 64, "lpc": 4, "tl": 16, "tb": 4}),
    "n6-complex-lpc8-tb1-reverse": dict(dtype=torch.float32, complex=True, N=6, reverse=True,
                                        fwd={"threads": 64, "lpc": 8, "tl": 16},
                                        bwd={"threads": 64, "lpc": 2, "tl": 16, "tb": 1}),
    "n16-lpc8-tb4": dict(dtype=torch.bfloat16, complex=False, fwd={"threads": 64, "lpc": 8, "tl": 32},
                         bwd={"threads": 64, "lpc": 8, "tl": 32, "tb": 4}),
    "n16-lpc1-tb2": dict(dtype=torch.float32, complex=False,
                         bwd={"threads": 64, "lpc": 1, "tl": 16, "tb": 2}),
    # forward K 8 of N 30 (NP 32) in runs of 4 over the lanes: padded states in the last run
    "n30-fwd-state-runs-padded": dict(dtype=torch.bfloat16, complex=False, N=30, reverse=True,
                                      fwd={"threads": 128, "lpc": 4, "tl": 32},
                                      bwd={"threads": 64, "lpc": 4, "tl": 32, "tb": 4}),
    "n17-deterministic": dict(dtype=torch.float32, complex=False, N=17, B_groups=2,
                              deterministic=True,
                              bwd={"threads": 64, "lpc": 4, "tl": 16, "tb": 4}),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_SUM_CASES))
def test_lane_and_channel_sums_match_reference(name, monkeypatch):
    """Every output and gradient against float64 for the lane-sum plans of the backward and of
    the forward, and the backward's step-major variable dB / dC sums (single split)."""
    c = dict(_SUM_BASE, **_SUM_CASES[name])
    c["fwd"], c["bwd"] = dict(c["fwd"], splits=1), dict(c["bwd"], splits=1)
    monkeypatch.setenv("SSMGEN_DETERMINISTIC", "1" if c.pop("deterministic", False) else "0")
    check_case(c, "cuda", 2468)


# Inner chunks (config ic): checkpoints every chunk_len = 128 steps, the backward's states kept
# for ic steps at a time, after a walk from the checkpoint (L 300: the last chunk, 44 steps,
# is two inner chunks of 32, one partial); a tile as long as the inner chunk (phase 2 reuses
# phase 1's last tile, earlier tiles load B only), packed sequences with initial states
# crossing inner chunks, reverse with splits, complex, d_state 128 at 32 lanes, deterministic
_INNER_BASE = dict(_SPLIT_BASE, chunk_len=128, fwd={"threads": 128, "lpc": 4, "tl": 32})
_INNER_CASES = {
    "ic32-tile32-varlen-h0": dict(dtype=torch.bfloat16, complex=False, batch=1, varlen=True,
                                  cu_seqlens=[0, 20, 100, 161, 300], initial_state=True,
                                  bwd={"threads": 64, "lpc": 8, "tl": 32, "tb": 4, "ic": 32}),
    "ic64-tile16-reverse-splits": dict(dtype=torch.float32, complex=False, reverse=True,
                                       initial_state=True,
                                       bwd={"threads": 64, "lpc": 4, "tl": 16, "tb": 8,
                                            "ic": 64, "splits": 2}),
    "ic32-complex-h0": dict(dtype=torch.float32, complex=True, N=6, initial_state=True,
                            bwd={"threads": 64, "lpc": 2, "tl": 16, "tb": 4, "ic": 32}),
    "ic64-n128-lpc32": dict(dtype=torch.bfloat16, complex=False, N=128, batch=1, dim=12,
                            fwd={"threads": 128, "lpc": 32, "tl": 32},
                            bwd={"threads": 128, "lpc": 32, "tl": 32, "tb": 8, "ic": 64}),
    "ic32-deterministic-groups": dict(dtype=torch.float32, complex=False, N=17, B_groups=2,
                                      deterministic=True,
                                      bwd={"threads": 64, "lpc": 4, "tl": 16, "tb": 4,
                                           "ic": 32}),
}


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(_INNER_CASES))
def test_inner_chunks_match_reference(name, monkeypatch):
    """The backward in inner chunks (cuda_backend.KernelConfig.ic): output, last state and every
    gradient against float64."""
    c = dict(_INNER_BASE, **_INNER_CASES[name])
    c["fwd"], c["bwd"] = dict(c["fwd"], splits=1), dict({"splits": 1}, **c["bwd"])
    monkeypatch.setenv("SSMGEN_DETERMINISTIC", "1" if c.pop("deterministic", False) else "0")
    check_case(c, "cuda", 1357)
