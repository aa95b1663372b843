"""CUDA backend on a machine without a GPU: every template variant renders and compiles for
sm_80 and sm_90 (the toolkit's nvcc, as NVRTC would at run time) with no local-memory spills at
the configs the backend picks by default; compile errors name the rendered file and line; the
cubin cache keys on source and architecture; configs and backend choice are validated.
The numerics of the compiled kernels are the `gpu` tests' (test_scan_numerics)."""
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import ssmgen
from ssmgen.aot import covering_specs
from ssmgen.backends import cuda_backend as cb
from ssmgen.backends import cuda_runtime as cr

needs_nvcc = pytest.mark.skipif(cr.nvcc_path() is None, reason="nvcc (CUDA toolkit) not found")


def _variants():
    """(spec, config, kind, vector width) of every covering spec at its default configs: the
    forward with element loads and, where its tile allows, with 16-byte vectors; and the
    split pre-passes that the same configs run with when a sequence is cut into splits."""
    out = []
    for s in covering_specs():
        s = s.replace(chunk_len=cb.default_chunk_len(s))
        cfg = cb.default_config(s)
        for main in ("fwd", "bwd"):
            k = dataclasses.replace(getattr(cfg, main), splits=2)
            out += [(s, k, kind, v) for kind in cb.kinds_of(k, main)
                    for v in cb.variants(s, k, kind)]
    return out


@needs_nvcc
@pytest.mark.parametrize("arch", [80, 90])
def test_every_variant_compiles_without_spills(arch, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path))

    def job(v):
        s, k, kind, vec = v
        t = time.perf_counter()
        name = cb.kernel_name(s, k, kind, vec)
        use = cr.resource_usage(name, cb.render_source(s, k, kind, vec), arch)
        return name, use, cb.smem_bytes(s, k, kind), time.perf_counter() - t

    with ThreadPoolExecutor(2) as pool:
        rows = list(pool.map(job, _variants()))
    assert len(rows) >= 2 * len(covering_specs())
    assert any(name.endswith(("_v8", "_v4")) for name, *_ in rows)  # vector forwards compiled
    assert {n.split("_")[2] for n, *_ in rows} == {"fwd", "bwd", "fsplit", "bsplit"}
    lines = [f"| kernel (sm_{arch}) | regs | spill st/ld B | smem B | nvcc s |", "|---|---|---|---|---|"]
    for name, use, smem, sec in rows:
        lines.append(f"| {name} | {use['registers']} | {use['spill_stores']}/{use['spill_loads']} "
                     f"| {smem} | {sec:.1f} |")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    for name, use, smem, _ in rows:
        assert use["registers"] is not None and 0 < use["registers"] <= 255, (name, use)
        assert use["spill_stores"] == 0 and use["spill_loads"] == 0, (name, use)
        assert smem <= cb.SMEM_LIMIT


@needs_nvcc
def test_inner_chunk_backwards_compile_without_spills(tmp_path, monkeypatch):
    """The backward in inner chunks (config ic), both tile forms (a tile shorter than the inner
    chunk; one as long, phase 1 choosing its tile's loads at run time), over the covering specs
    with packed sequences and initial states, complex A, and d_state 64, for sm_90: no spills."""
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path))
    cs = covering_specs()
    specs = [next(s for s in cs if s.varlen and s.has_initial_state and not s.complex_A),
             next(s for s in cs if s.complex_A and s.varlen),
             next(s for s in cs if s.d_state == 64)]
    for s in specs:
        s = s.replace(chunk_len=128)
        base = cb.default_config(s).bwd
        for tl, ic in ((min(base.tl, 32), 64), (32, 32)):
            k = dataclasses.replace(base, tl=tl, tb=min(base.tb, tl), ic=ic)
            k.check(s, "bwd")
            src = cb.render_source(s, k, "bwd")
            assert f"#define IC {ic}" in src and "const bool keep" in src
            use = cr.resource_usage(cb.kernel_name(s, k, "bwd"), src, 90)
            assert 0 < use["registers"] <= 255, (k, use)
            assert use["spill_stores"] == 0 and use["spill_loads"] == 0, (k, use)


def test_inner_chunks_keep_the_whole_chunk_kernels_unchanged():
    """ic = 0 renders the kernel it did before inner chunks existed (no IC, no walk), and the
    inner-chunk kernel holds ic steps' states in shared memory, not chunk_len's."""
    s = covering_specs()[0].replace(chunk_len=256)
    k = cb.KernelConfig(threads=64, lpc=4, tl=32, tb=8)
    src = cb.render_source(s, k, "bwd")
    assert "#define IC" not in src and "bool keep" not in src
    assert "_i" not in cb.kernel_name(s, k, "bwd").split("__")[1]
    ki = dataclasses.replace(k, ic=64)
    assert cb.kernel_name(s, ki, "bwd").endswith("_i64")
    hs = lambda kk: cb.smem_layout(s, kk, "bwd")[1]  # noqa: E731
    assert hs(k) - hs(ki) == (256 - 64) // 8 * 64 * 4 * 4   # S_HS: chunk / tb slots of K floats
    for bad in (16, 256, 512):   # below tl, the whole chunk, past it
        with pytest.raises(ValueError, match="config.ic"):
            dataclasses.replace(k, ic=bad).check(s, "bwd")


@needs_nvcc
def test_compile_error_names_rendered_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cr, "_nvrtc", lambda: None)  # the nvcc path (no NVRTC on this machine)
    s = covering_specs()[0].replace(chunk_len=128)
    k = cb.default_config(s).fwd
    src = cb.render_source(s, k, "fwd")
    lines = src.splitlines()
    bad_line = next(i for i, ln in enumerate(lines) if "float y = 0.f;" in ln) + 1
    lines[bad_line - 1] += " this_is_not_cuda;"
    with pytest.raises(cr.CudaCompileError) as e:
        cr.compile_cubin("broken", "\n".join(lines) + "\n", 90)
    msg = str(e.value)
    assert str(tmp_path) in msg and f"({bad_line})" in msg and "this_is_not_cuda" in msg


@needs_nvcc
def test_cubin_cache_keys_on_source_and_arch(tmp_path, monkeypatch):
    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cr, "_nvrtc", lambda: None)
    s = covering_specs()[0].replace(chunk_len=128)
    k = cb.default_config(s).fwd
    name, src = cb.kernel_name(s, k, "fwd"), cb.render_source(s, k, "fwd")
    p90 = cr.compile_cubin(name, src, 90)
    assert p90.exists() and p90.read_bytes()[:4] == b"\x7fELF"
    calls = []
    monkeypatch.setattr(cr, "_compile_nvcc", lambda *a, **kw: calls.append(a) or (b"", ""))
    assert cr.compile_cubin(name, src, 90) == p90 and calls == []  # cached: no compiler run
    assert cr.cubin_path(name, src, 80) != p90
    assert cr.cubin_path(name, src + "// changed\n", 90) != p90


def test_config_checks_name_the_field():
    s = covering_specs()[0].replace(chunk_len=64)
    with pytest.raises(ValueError, match="config.tl"):
        cb.KernelConfig(tl=128).check(s, "fwd")
    with pytest.raises(ValueError, match="config.threads"):
        cb.KernelConfig(threads=96).check(s, "fwd")
    with pytest.raises(ValueError, match="shared memory"):
        cb.KernelConfig(threads=1024, lpc=1, tl=64, tb=1).check(s.replace(chunk_len=4096), "bwd")
    with pytest.raises(ValueError, match="registers"):
        cb.KernelConfig(lpc=1, tb=64, tl=64).check(s.replace(d_state=16), "bwd")


def test_every_default_config_is_valid():
    """Valid at the backend's default chunk and every shorter one; a longer chunk than the
    backward's shared memory allows (d_state > 256) is refused naming the remedy."""
    for s in covering_specs():
        for chunk in (16, 64, 128, 256):
            sc = s.replace(chunk_len=chunk)
            cfg = cb.default_config(sc)
            cfg.fwd.check(sc, "fwd")
            if chunk <= cb.default_chunk_len(s):
                cfg.bwd.check(sc, "bwd")
                continue
            try:  # longer than the default: fits, or is refused naming the remedy
                cfg.bwd.check(sc, "bwd")
            except ValueError as e:
                assert "shorter chunk_len" in str(e)


def test_candidates_are_valid_and_start_small():
    s = covering_specs()[0]
    c = cb.candidates(s, dim=1536, seqlen=2048)
    assert c["fwd"] and c["bwd"]
    for k in c["fwd"]:
        k.check(s, "fwd")
    for chunk, k in c["bwd"]:
        k.check(s.replace(chunk_len=chunk), "bwd")


def test_backend_cuda_needs_cuda_tensors_and_its_own_config():
    u = torch.randn(1, 4, 8)
    A = -torch.rand(4, 2)
    B = torch.randn(1, 2, 8)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        ssmgen.selective_scan(u, u.abs(), A, B, B, backend="cuda")
    from ssmgen.backends import triton_backend
    from ssmgen.ops import _backend_config

    with pytest.raises(TypeError, match="not this backend's ScanConfig"):
        _backend_config(cb, triton_backend.default_config(covering_specs()[0]))
    with pytest.raises(TypeError, match="kernel fields are"):
        _backend_config(cb, {"block_d": 4})
    assert _backend_config(cb, {"threads": 64}).fwd.threads == 64


def test_config_encoding_round_trips():
    s = covering_specs()[3]
    cfg = cb.default_config(s)
    assert cb.ScanConfig.decode(cfg.encode()) == cfg
    assert cb.ScanConfig.from_dict(cfg.to_dict()) == cfg
    split = cb.ScanConfig(dataclasses.replace(cfg.fwd, splits=8), cfg.bwd)
    assert cb.ScanConfig.decode(split.encode()) == split
    # records written before splits existed still load (auto splits, the default)
    old = {kind: {f: v for f, v in d.items() if f != "splits"} for kind, d in cfg.to_dict().items()}
    assert cb.ScanConfig.from_dict(old) == cfg and cfg.fwd.splits == 0


@pytest.mark.parametrize("L,chunk,asked", [(1, 16, 4), (160, 16, 4), (160, 16, 8), (160, 16, 64),
                                            (4096, 64, 16), (100, 32, 2), (4097, 64, 32)])
def test_split_plan_covers_every_chunk_once(L, chunk, asked):
    """Splits of whole chunks, none empty, never more than asked or than chunks, and the same
    kernels (names) whatever the split count: splits is a launch parameter."""
    s = covering_specs()[0].replace(chunk_len=chunk)
    call = type("C", (), {"seqlen": L, "spec": s})()
    k = cb.KernelConfig(splits=asked)
    n, per = cb.split_plan(call, k)
    chunks = -(-L // chunk)
    assert 1 <= n <= min(asked, chunks)
    covered = [c for sp in range(n) for c in range(sp * per, min(chunks, (sp + 1) * per))]
    assert covered == list(range(chunks))  # each chunk once, in order, every split non-empty
    assert all(sp * per < chunks for sp in range(n))
    assert cb.kernel_name(s, k, "fwd") == cb.kernel_name(s, cb.KernelConfig(), "fwd")
    assert cb.kinds_of(k, "fwd") == (["fsplit", "fwd"] if asked > 1 else ["fwd"])
    assert [r.splits for r in cb.refine(s, call, cb.KernelConfig(), "bwd")] == [
        x for x in (1, 2, 4, 8, 16, 32, 64) if x <= chunks]


def test_splits_must_be_a_power_of_two():
    s = covering_specs()[0]
    cb.KernelConfig(splits=0).check(s, "fwd")  # auto
    for bad in (-1, 3, 128):
        with pytest.raises(ValueError, match="config.splits"):
            cb.KernelConfig(splits=bad).check(s, "fwd")


@needs_nvcc
def test_build_ext_pack_is_used_without_any_compiler(tmp_path, monkeypatch):
    import json
    import subprocess
    import sys

    monkeypatch.setenv("SSMGEN_CACHE_DIR", str(tmp_path / "cache"))
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps([{"d_state": 16, "dtype": "bfloat16", "has_D": True,
                                  "delta_softplus": True},
                                 {"d_state": 3, "complex_A": True,
                                  "config": {"fwd": {"threads": 64, "lpc": 2}}}]))
    pack = tmp_path / "pack"
    r = subprocess.run([sys.executable, "-m", "ssmgen", "build-ext", "--specs", str(specs),
                        "--arch", "90", "--out", str(pack)], capture_output=True, text=True,
                       env={**__import__("os").environ, "SSMGEN_CACHE_DIR": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    # per spec: fwd, its split pre-pass and bwd, each with element loads and with 16-byte
    # vectors (the default tiles allow them), and bwd's pre-pass (element loads only)
    assert len(list(pack.glob("*.cubin"))) == 14
    # a deployment with no compiler at all: the pack answers
    monkeypatch.setenv("SSMGEN_CUDA_PACK", str(pack))
    monkeypatch.setattr(cr, "_nvrtc", lambda: None)
    monkeypatch.setattr(cr, "nvcc_path", lambda: None)
    from ssmgen.spec import ScanSpec

    s = ScanSpec(d_state=16, dtype="bfloat16", has_D=True, delta_softplus=True, chunk_len=128)
    for kind in ("fwd", "fsplit", "bwd", "bsplit"):
        k = getattr(cb.default_config(s), cb.MAIN.get(kind, kind))
        for v in cb.variants(s, k, kind):
            p = cr.compile_cubin(cb.kernel_name(s, k, kind, v), cb.render_source(s, k, kind, v), 90)
            assert p.parent == pack
    k = cb.default_config(s).fwd
    with pytest.raises(cr.CudaCompileError, match="no CUDA compiler|nvcc not found"):  # not packed
        cr.compile_cubin(cb.kernel_name(s, k, "fwd"), cb.render_source(s, k, "fwd") + "\n", 80)


def _inputs_b2_d40_l96(dtype, seed):
    """Inputs of a (2, 40, 96) call, N 16, all options, on the GPU; the generator, for more."""
    g = torch.Generator().manual_seed(seed)
    b, d, L, N = 2, 40, 96, 16
    x = dict(u=torch.randn(b, d, L, generator=g), delta=0.5 * torch.rand(b, d, L, generator=g),
             A=-0.5 * torch.rand(d, N, generator=g), B=torch.randn(b, 1, N, L, generator=g),
             C=torch.randn(b, 1, N, L, generator=g), D=torch.randn(d, generator=g),
             z=torch.randn(b, d, L, generator=g), delta_bias=0.1 * torch.rand(d, generator=g))
    return {k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).cuda()
            for k, v in x.items()}, g


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
def test_vector_and_element_forwards_agree(dtype, reverse, monkeypatch):
    """An aligned call takes the 16-byte-vector forward (u, delta, z, B, C, out); the same
    values 2 bytes off (a view into a wider buffer: strides still multiples of the vector), of
    every tensor or of B alone, take the element forward. All match the float64 reference, and
    a misaligned call does not reuse the vector kernel."""
    from ssmgen.numerics import assert_close
    from ssmgen.reference import selective_scan_ref

    x, g = _inputs_b2_d40_l96(dtype, 3)
    b, d, L = 2, 40, 96
    ref = selective_scan_ref(**x, delta_softplus=True, reverse=reverse)  # computed in float64
    loaded, real_function = [], cb.cuda_runtime.function
    monkeypatch.setattr(cb.cuda_runtime, "function",
                        lambda name, *a: loaded.append(name) or real_function(name, *a))
    outs = []
    # vector, element, element (B alone 2 bytes off), vector again
    for off, names in ((0, "u delta z B C"), (1, "u delta z B C"), (1, "B"), (0, "B")):
        y = dict(x)
        for n in names.split():
            wide = torch.full(x[n].shape[:-1] + (L + 16,), float("nan"), dtype=dtype,
                              device="cuda")
            y[n] = wide[..., off:off + L].copy_(x[n])
        assert (y["B"].data_ptr() % 16 == 0) == (off == 0)
        loaded.clear()
        with torch.no_grad():
            outs.append(ssmgen.selective_scan(**y, delta_softplus=True, reverse=reverse,
                                              backend="cuda"))
        assert loaded and all(n.endswith(("_v8", "_v4")) == (off == 0) for n in loaded), loaded
        assert_close(f"out (offset {off} of {names})", outs[-1], ref, dtype)
    assert torch.equal(outs[0], outs[3])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunk_len", [32, 64])   # 32: the chunk is one tile (TL == CHUNK)
def test_vector_and_element_backwards_match_reference(dtype, reverse, chunk_len):
    """The backward takes 16-byte vectors (u, delta, z, dout, B, C) on an aligned call and
    element loads when the same values sit 2 bytes off; both give every gradient of the float64
    reference, with a chunk of one tile and of two."""
    from ssmgen.numerics import assert_close
    from ssmgen.reference import selective_scan_ref

    x, g = _inputs_b2_d40_l96(dtype, 4)
    b, d, L = 2, 40, 96
    dout = torch.randn(b, d, L, generator=g).to(dtype).cuda()
    rx = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    ref = selective_scan_ref(**rx, delta_softplus=True, reverse=reverse)  # computed in float64
    rg = torch.autograd.grad(ref, list(rx.values()), dout.to(ref.dtype))
    cfg = {"chunk_len": chunk_len, "fwd": {"threads": 128, "lpc": 4, "tl": 32},
           "bwd": {"threads": 64, "lpc": 4, "tl": 32, "tb": 4, "splits": 1}}
    for off in (0, 1):   # vector, element
        y = {}
        for k, v in x.items():
            if v.dim() >= 3:
                wide = torch.full(v.shape[:-1] + (L + 16,), float("nan"), dtype=dtype,
                                  device="cuda")
                v = wide[..., off:off + L].copy_(v)
            y[k] = v.detach().requires_grad_(True)
        assert (y["B"].data_ptr() % 16 == 0) == (off == 0)
        out = ssmgen.selective_scan(**y, delta_softplus=True, reverse=reverse, backend="cuda",
                                    config=cfg)
        got = torch.autograd.grad(out, list(y.values()), dout)
        assert_close(f"out (offset {off})", out, ref, dtype)
        for k, a, r in zip(y, got, rg):
            assert_close(f"d{k} (offset {off})", a, r, dtype)
