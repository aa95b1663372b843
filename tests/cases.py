"""Hypothesis strategies over the whole IR space, and random inputs as suite.json draws them."""
import torch
from hypothesis import strategies as st

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@st.composite
def scan_cases(draw, big: bool = False, dtype=None, cplx=None, backend: str = "triton"):
    """A call of selective_scan: sizes, input forms, options and kernel config (dtype and the
    A form drawn too unless given) for the given backend."""
    c = {"backend": backend}
    c["dtype"] = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    c["complex"] = draw(st.booleans()) if cplx is None else cplx
    c["N"] = draw(st.sampled_from([1, 3, 16, 17, 64, 128, 256, 300, 512] if big
                                  else [1, 2, 3, 5, 8]))
    c["chunk_len"] = draw(st.sampled_from([16, 64, 256] if big else [16, 32]))
    ch = c["chunk_len"]
    # L below, equal to, a multiple of, and not a multiple of chunk_len
    c["L"] = draw(st.one_of(st.integers(1, ch - 1), st.just(ch), st.just(2 * ch),
                            st.integers(ch + 1, (4 if big else 2) * ch + ch // 2)))
    c["batch"] = draw(st.integers(1, 3 if big else 2))
    # variants: a start state (per sequence when packed), the scan direction, packed sequences
    # (batch 1; boundaries drawn anywhere, empty sequences included)
    c["varlen"] = draw(st.booleans())
    if c["varlen"]:
        c["batch"] = 1
        cuts = draw(st.lists(st.integers(0, c["L"]), min_size=0, max_size=4))
        c["cu_seqlens"] = [0] + sorted(cuts) + [c["L"]]
    c["initial_state"] = draw(st.booleans())
    c["reverse"] = draw(st.booleans())
    c["dim"] = draw(st.integers(1, 48 if big else 6))
    bls = [b for b in ([8, 16, 32, 64] if big else [2, 4, 8, 16]) if b <= ch]
    for kind in ("bwd", "fwd"):  # bwd first: it may shorten chunk_len (CUDA)
        if backend == "cuda":
            # a long chunk at a large complex d_state exceeds shared memory: the backend
            # refuses it by name (tested in test_cuda_backend); draw a shorter one then
            while (k := _cuda_config(draw, c["N"], c["complex"], c["chunk_len"])) is None:
                c["chunk_len"] //= 2
            c[kind] = k
        else:
            c[kind] = _kernel_config(draw(st.sampled_from(bls)), draw(st.sampled_from([1, 2, 4])),
                                     c["N"], c["complex"])
    divisors = [g for g in range(1, c["dim"] + 1) if c["dim"] % g == 0]
    for X in ("B", "C"):
        form = draw(st.sampled_from(["constant", "var3", "var4"]))
        c[X] = form
        c[X + "_groups"] = draw(st.sampled_from(divisors)) if form == "var4" else 1
        # complex variable B/C: a complex64 tensor (fp32 only) or mamba's interleaved real form
        c[X + "_complex_tensor"] = (c["complex"] and c["dtype"] == torch.float32
                                    and form != "constant" and draw(st.booleans()))
    for flag in ("D", "z", "delta_bias", "delta_softplus", "return_last_state", "noncontig"):
        c[flag] = draw(st.booleans())
    return c


def _cuda_config(draw, N, cplx, chunk):
    """A CUDA-backend config (threads, lanes per channel, tile, sub-tile, splits), shrunk until the
    backend accepts it for the worst case of this d_state (all options, variable B/C)."""
    from ssmgen.backends.cuda_backend import KernelConfig, _lpc_for
    from ssmgen.spec import ScanSpec

    spec = ScanSpec(d_state=N, complex_A=cplx, chunk_len=chunk, has_D=True, has_z=True,
                    delta_softplus=True)
    threads = draw(st.sampled_from([32, 64, 128, 256]))
    K = draw(st.sampled_from([1, 2, 4, 8]))
    tl = draw(st.sampled_from([t for t in (4, 8, 16, 32) if t <= min(chunk, threads)]))
    tb = draw(st.sampled_from([t for t in (1, 2, 4, 8) if t <= tl]))
    lpc = min(_lpc_for(spec, K), threads)
    splits = draw(st.sampled_from([1, 1, 2, 4, 8]))  # cut the sequence (more than its chunks too)
    inner = draw(st.sampled_from([0, 0, 2, 4]))  # the backward's chunks as that many inner chunks
    lg = lambda x: x.bit_length()  # noqa: E731
    combos = [(t, p, l, b) for t in (32, 64, 128, 256) for p in (1, 2, 4, 8, 16, 32)
              for l in (4, 8, 16, 32) for b in (1, 2, 4, 8)
              if p <= t and l <= min(chunk, t) and b <= l and p >= lpc // 2]
    combos.sort(key=lambda x: (abs(lg(x[1]) - lg(lpc)), abs(lg(x[0]) - lg(threads)),
                               abs(lg(x[3]) - lg(tb)), abs(lg(x[2]) - lg(tl))))
    for t, p, l, b in combos:
        ic = chunk // inner if inner and chunk // inner >= l else 0
        try:
            KernelConfig(t, p, l, b, ic=ic).check(spec, "bwd")
            return dict(threads=t, lpc=p, tl=l, tb=b, splits=splits, ic=ic)
        except ValueError:
            continue
    return None  # nothing fits this chunk_len (the caller takes a shorter one)


def _kernel_config(block_l, block_d, N, cplx):
    """Shrinks the drawn tile to at most 4096 fp32 values and picks warps for ~32 per thread
    (larger tiles are refused by KernelConfig.check: they spill and compile for minutes)."""
    NP = max(2, 1 << (N - 1).bit_length())
    k = 2 if cplx else 1
    while block_d * NP * block_l * k > 4096 and block_d > 1:
        block_d //= 2
    while block_d * NP * block_l * k > 4096 and block_l > 2:
        block_l //= 2
    warps = min(8, max(1, block_d * NP * block_l * k // 1024))
    return dict(block_l=block_l, block_d=block_d, num_warps=1 << (warps.bit_length() - 1))


def _strided(shape, dtype, device, noncontig, gen, fill):
    """A tensor of `shape`; non-contiguous forms exercise both copying (last stride != 1) and
    passing strides through (a slice along the second dim)."""
    if not noncontig:
        return fill(torch.empty(shape, dtype=dtype, device=device), gen)
    if len(shape) >= 3 and shape[-1] > 1 and len(shape) % 2:
        big = fill(torch.empty(shape[:-2] + (shape[-1], shape[-2]), dtype=dtype, device=device), gen)
        return big.transpose(-1, -2)
    padded = (shape[0], shape[1] + 2) + tuple(shape[2:]) if len(shape) >= 2 else shape
    big = fill(torch.empty(padded, dtype=dtype, device=device), gen)
    return big[:, 1:shape[1] + 1] if len(shape) >= 2 else big


def _normal(t, gen):
    if t.is_complex():
        return t.copy_(torch.randn(t.shape, dtype=t.dtype, generator=gen).to(t.device))
    return t.copy_(torch.randn(t.shape, generator=gen).to(t.device))


def _uniform(scale):
    def fill(t, gen):
        return t.copy_((scale * torch.rand(t.shape, generator=gen)).to(t.device))
    return fill


def make_inputs(c: dict, device, seed: int):
    """Fresh random inputs (never zeros), drawn as suite.json says."""
    gen = torch.Generator().manual_seed(seed)
    b, d, L, N, dt = c["batch"], c["dim"], c["L"], c["N"], c["dtype"]
    nc = c["noncontig"]
    u = _strided((b, d, L), dt, device, nc, gen, _normal)
    delta = _strided((b, d, L), dt, device, nc, gen, _uniform(0.5))
    if c["complex"]:
        A = torch.complex(-0.5 * torch.rand(d, N, generator=gen),
                          torch.randn(d, N, generator=gen)).to(device)
    else:
        A = (-0.5 * torch.rand(d, N, generator=gen)).to(device)
    bc = {}
    for X in ("B", "C"):
        form, g = c[X], c[X + "_groups"]
        if form == "constant":
            shape, xdt = (d, N), (torch.complex64 if c["complex"] else torch.float32)
        else:
            shape = (b, N, L) if form == "var3" else (b, g, N, L)
            xdt = dt
            if c["complex"]:
                if c[X + "_complex_tensor"]:
                    xdt = torch.complex64
                else:
                    shape = shape[:-1] + (2 * L,)
        bc[X] = _strided(shape, xdt, device, nc, gen, _normal)
    D = torch.randn(d, generator=gen).to(device) if c["D"] else None
    z = _strided((b, d, L), dt, device, nc, gen, _normal) if c["z"] else None
    dbias = (0.1 * torch.rand(d, generator=gen)).to(device) if c["delta_bias"] else None
    return [u, delta, A, bc["B"], bc["C"], D, z, dbias]


def make_variants(c: dict, device, seed: int) -> dict:
    """The keyword arguments of the drawn variant: initial_state, cu_seqlens, reverse."""
    gen = torch.Generator().manual_seed(seed + 2)
    v = {"reverse": c.get("reverse", False)}
    if c.get("initial_state"):
        sdt = torch.complex64 if c["complex"] else torch.float32
        rows = len(c["cu_seqlens"]) - 1 if c.get("varlen") else c["batch"]
        v["initial_state"] = _normal(torch.empty(rows, c["dim"], c["N"], dtype=sdt), gen
                                     ).to(device)
    if c.get("varlen"):
        v["cu_seqlens"] = torch.tensor(c["cu_seqlens"], dtype=torch.int32, device=device)
    return v


def config_of(c: dict) -> dict:
    return {"chunk_len": c["chunk_len"], "fwd": c["fwd"], "bwd": c["bwd"]}
