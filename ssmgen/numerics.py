"""Comparison against the float64 reference, with tolerances per dtype.

Both sides see the same inputs (the reference upcasts them exactly), so the error comes from
fp32 arithmetic in the kernel (scan order, exp2, atomics) and from rounding the results to the
input dtype. Tolerances follow from that:

| dtype    | rel. norm  | elementwise |g - r| <=          | why                                     |
| float32  | 1e-4       | 1e-4 * max|r| + 1e-3 * |r|     | fp32 accumulation over L: ~1e-6 seen    |
| float16  | 2e-3       | 2e-3 * max|r| + 4e-3 * |r|     | fp16 rounding of outputs: 2^-11 = 5e-4  |
| bfloat16 | 1e-2       | 1e-2 * max|r| + 1.6e-2 * |r|   | bf16 rounding of outputs: 2^-8 = 3.9e-3 |

Gradients of fp32 parameters (dA, dD, d delta_bias, constant dB/dC) are fp32 sums and get the
same bound as the input dtype, since they sum terms derived from rounded inputs' gradients.
A NaN or Inf anywhere fails. Relative norm: ||g - r|| / ||r||. The scale of the absolute term
is max|r| but at least FLOOR (and the norm is divided by at least FLOOR): a gradient that is
exactly zero in float64 (dA when L = 1, a sum of terms g*(x_t - B_t dt_t u_t) that cancel
exactly) comes out as fp32 rounding noise of the terms (~1e-7 each once the compiler fuses the
subtraction into an FMA), which is correct; against FLOOR = 1e-2 that noise is judged at the
fp32 tolerance. Typical gradients here have norms of 1 to 1e3, far above the floor.
"""
import torch

FLOOR = 1e-2

TOL = {  # dtype: (rel_norm, atol_frac_of_max, rtol)
    torch.float32: (1e-4, 1e-4, 1e-3),
    torch.float16: (2e-3, 2e-3, 4e-3),
    torch.bfloat16: (1e-2, 1e-2, 1.6e-2),
}


def assert_close(name: str, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype,
                 floor: float = FLOOR):
    """floor: the smallest scale errors are judged against (default FLOOR). A gradient that
    sums many terms which cancel in float64 passes the size of its terms here."""
    got = got.detach().cpu()
    ref = ref.detach().cpu()
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    g = got.to(torch.complex128 if got.is_complex() or ref.is_complex() else torch.float64)
    r = ref.to(g.dtype)
    assert torch.isfinite(g).all(), f"{name}: non-finite values in the kernel's result"
    assert torch.isfinite(r).all(), f"{name}: non-finite values in the reference"
    rel_norm, atol_frac, rtol = TOL[dtype]
    err = (g - r).abs()
    scale = max(r.abs().max().item() if r.numel() else 0.0, floor)
    rel = (err.norm() / max(r.norm().item(), floor)).item()
    assert rel <= rel_norm, (
        f"{name}: ||g-r||/||r|| = {rel:.3e} > {rel_norm:.1e} ({dtype})")
    bound = atol_frac * scale + rtol * r.abs()
    bad = err > bound
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {err.numel()} elements out of bounds; worst "
                           f"err {err.max().item():.3e} (scale {scale:.3e}, {dtype})")
    return rel
