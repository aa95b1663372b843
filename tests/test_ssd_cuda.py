"""Mamba-2 SSD on the generated CUDA kernels (backends/cuda_ssd.py): on the GPU against the
float64 reference (output, final states, every gradient; packed sequences and varlen states;
hypothesis over variants, sizes and configs). Without a GPU: every covering variant's three
kernels compile for sm_80 and sm_90 with nvcc, the configs and errors."""
import os
import shutil
import subprocess

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import ssmgen
from ssmgen.aot import covering_ssd_specs
from ssmgen.backends import cuda_ssd
from ssmgen.spec import SSDSpec
from ssmgen.ssd_kernels import config_of, decode_config
from test_ssd import BF16, F16, F32, HEADS_GROUPS, make_inputs
from test_ssd_kernels import check, poison  # noqa: F401 (poison: autouse fixture)
from test_ssd_kernels import test_triton_ssd_matches_reference_gpu as _reference
from test_ssd_kernels import test_triton_ssd_packed_gpu as _packed

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("spec", covering_ssd_specs(), ids=lambda s: s.short_name())
def test_every_variant_compiles(spec, arch, tmp_path):
    """Each kernel of the variant's default config (and a large-block config where it fits)
    compiles with nvcc, in the scalar variant and (where d_state and headdim allow) the
    16-byte vector one."""
    cfgs = [cuda_ssd.default_config(spec, 8, 64)]
    big = cuda_ssd.CudaSSDConfig(block_q=64, block_p=64, threads=256, bwd_block_p=32,
                                 heads_per_program=4, bwd_threads=256)
    if all(cuda_ssd.smem_layout(spec, big, k)[1] <= cuda_ssd.SMEM_LIMIT for k in cuda_ssd.KINDS):
        cfgs.append(big)
    vecs = (False, True) if spec.d_state % 8 == 0 and spec.headdim % 8 == 0 else (False,)
    for cfg in cfgs:
        for kind, vec in [(k, v) for k in cuda_ssd.KINDS for v in vecs]:
            src = cuda_ssd.render_source(spec, cfg, kind, vec)
            name = cuda_ssd.kernel_name(spec, cfg, kind, vec)
            assert name in src and "__global__" in src
            f = tmp_path / f"{name}.cu"
            f.write_text(src)
            r = subprocess.run([NVCC, f"-arch=sm_{arch}", "-cubin", "-std=c++17", "-o",
                                str(f) + ".cubin", str(f)], capture_output=True, text=True)
            assert r.returncode == 0, f"{name} sm_{arch}:\n{r.stderr[-3000:]}"


def test_config_round_trips_and_is_told_from_triton():
    cfg = cuda_ssd.CudaSSDConfig(block_q=64, block_p=16, threads=256, bwd_block_p=16,
                                 heads_per_program=1, bwd_threads=64)
    assert decode_config(cfg.encode()) == cfg
    from ssmgen.backends import triton_ssd
    t = triton_ssd.SSDConfig()
    assert decode_config(t.encode()) == t
    assert cfg.tag("bwd") != cfg.tag("fwd") and "t64" in cfg.tag("bwd")


@pytest.mark.parametrize("change, pattern", [
    (dict(block_q=8), r"config\.block_q must be >= 16"),
    (dict(block_q=256), r"config\.block_q must be <= 128"),
    (dict(threads=16), r"config\.threads must be in 32\.\.1024"),
    (dict(bwd_block_p=24), r"config\.bwd_block_p must be a positive power of two"),
    (dict(block_q=128, bwd_block_p=128, heads_per_program=8), r"shared memory"),
])
def test_bad_config_raises_naming_the_field(change, pattern):
    spec = SSDSpec(256, 128, "float32")
    with pytest.raises(ValueError, match=pattern):
        config_of(spec, change, backend="cuda")
    with pytest.raises(TypeError, match="CudaSSDConfig"):
        from ssmgen.backends import triton_ssd
        config_of(spec, triton_ssd.SSDConfig(), backend="cuda")


def test_default_config_fits_every_covering_variant():
    for spec in covering_ssd_specs() + [SSDSpec(512, 128, "float32")]:
        for batch in (1, 8):
            cuda_ssd.default_config(spec, batch, 64).check(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-tensor error")
def test_cuda_backend_needs_cuda_tensors():
    a = make_inputs(0, 1, 8, 2, 4, 4, 1)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        ssmgen.mamba_chunk_scan_combined(**a, chunk_size=8, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F16, F32])
@pytest.mark.parametrize("shape", [(2, 300, 8, 64, 128, 1), (1, 129, 6, 48, 20, 3)])
def test_cuda_ssd_matches_reference_gpu(shape, dtype):
    _reference(shape, dtype, None, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [BF16, F32])
@pytest.mark.parametrize("shape", [(2, 300, 8, 64, 128, 1), (1, 257, 6, 48, 20, 3)])
def test_cuda_ssd_packed_gpu(shape, dtype):
    _packed(shape, dtype, None, backend="cuda")


@pytest.mark.gpu
@settings(max_examples=int(os.environ.get("SSMGEN_SSD_EXAMPLES", "10")), deadline=None)
@given(b=st.integers(1, 3), L=st.integers(1, 400), HG=st.sampled_from(HEADS_GROUPS),
       P=st.integers(1, 80), N=st.integers(1, 140), D=st.sampled_from([None, "h", "hp"]),
       z=st.booleans(), dt_bias=st.booleans(), h0=st.booleans(), ret_final=st.booleans(),
       dtype=st.sampled_from([BF16, F16, F32]),
       config=st.sampled_from([None, dict(block_q=16, block_p=16, bwd_block_p=16,
                                          heads_per_program=1, threads=64, bwd_threads=64),
                               dict(block_q=64, block_p=32, threads=256, bwd_block_p=16,
                                    heads_per_program=2, bwd_threads=256)]),
       seed=st.integers(0, 2**31 - 1))
def test_cuda_ssd_fuzz_gpu(b, L, HG, P, N, D, z, dt_bias, h0, ret_final, dtype, config, seed):
    H, G = HG
    if config is not None:  # the large blocks do not fit every (d_state, dtype)
        spec = SSDSpec(N, P, str(dtype).replace("torch.", ""))
        cfg = cuda_ssd.CudaSSDConfig(**config)
        assume(all(cuda_ssd.smem_layout(spec, cfg, k)[1] <= cuda_ssd.SMEM_LIMIT
                   for k in cuda_ssd.KINDS))
    a = make_inputs(seed, b, L, H, P, N, G, dtype, dtype, D=D, z=z, dt_bias=dt_bias, h0=h0,
                    softplus=True)
    check(a, dict(dt_softplus=True), ret_final, config, dtype, seed, backend="cuda")
