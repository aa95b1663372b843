"""ScanSpec: validation, canonical key, JSON round trip, inference from a call."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, strategies as st

from ssmgen import MAX_D_STATE, ScanSpec

specs = st.builds(
    ScanSpec, d_state=st.integers(1, MAX_D_STATE),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]), complex_A=st.booleans(),
    B_layout=st.sampled_from(["constant", "variable"]),
    C_layout=st.sampled_from(["constant", "variable"]), has_D=st.booleans(), has_z=st.booleans(),
    has_delta_bias=st.booleans(), delta_softplus=st.booleans(), return_last_state=st.booleans(),
    chunk_len=st.sampled_from([16, 32, 64, 128, 256, 512, 1024, 2048, 4096]))


@given(specs)
def test_json_round_trip_and_hash(spec):
    back = ScanSpec.from_json(spec.to_json())
    assert back == spec and hash(back) == hash(spec) and back.key() == spec.key()


@given(specs, specs)
def test_key_is_injective(a, b):
    assert (a.key() == b.key()) == (a == b)


def test_key_is_canonical_and_omits_defaults():
    # Fields at their default are not written, so a field added later with a default leaves
    # every existing key unchanged (the cache and tuning records key on this string).
    assert ScanSpec(d_state=16).key() == "ss1-n16-f32"
    s = ScanSpec(d_state=16, dtype="bfloat16", has_D=True, has_z=True, delta_softplus=True,
                 chunk_len=128)
    assert s.key() == "ss1-n16-bf16-has_D=1-has_z=1-delta_softplus=1-chunk_len=128"


def test_key_is_the_same_in_another_process():
    s = ScanSpec(d_state=7, dtype="float16", complex_A=True, B_layout="constant")
    code = ("from ssmgen import ScanSpec; print(ScanSpec(d_state=7, dtype='float16', "
            "complex_A=True, B_layout='constant').key())")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == s.key()


def test_immutable():
    s = ScanSpec(d_state=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.d_state = 5


@pytest.mark.parametrize("kw, exc, words", [
    (dict(d_state=0), ValueError, "d_state"),
    (dict(d_state=MAX_D_STATE + 1), ValueError, "d_state"),
    (dict(d_state="16"), TypeError, "d_state"),
    (dict(d_state=True), TypeError, "d_state"),
    (dict(d_state=16, dtype="float64"), ValueError, "dtype"),
    (dict(d_state=16, B_layout="dense"), ValueError, "B_layout"),
    (dict(d_state=16, C_layout=None), ValueError, "C_layout"),
    (dict(d_state=16, has_z=1), TypeError, "has_z"),
    (dict(d_state=16, chunk_len=100), ValueError, "chunk_len"),
    (dict(d_state=16, chunk_len=8), ValueError, "chunk_len"),
    (dict(d_state=16, chunk_len=8192), ValueError, "chunk_len"),
])
def test_validation_names_the_field(kw, exc, words):
    with pytest.raises(exc, match=words):
        ScanSpec(**kw)


def test_from_json_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        ScanSpec.from_json('{"d_state": 4, "colour": "red"}')


def test_from_inputs_infers_every_field():
    b, d, L, N = 2, 4, 10, 3
    u = torch.randn(b, d, L, dtype=torch.bfloat16)
    A = torch.complex(-torch.rand(d, N), torch.randn(d, N))
    B = torch.randn(b, 2, N, 2 * L, dtype=torch.bfloat16)  # interleaved complex
    C = torch.randn(d, N, dtype=torch.complex64)
    s = ScanSpec.from_inputs(u, torch.rand_like(u), A, B, C, D=torch.randn(d), z=None,
                             delta_bias=torch.rand(d), delta_softplus=True, chunk_len=64)
    assert s == ScanSpec(d_state=N, dtype="bfloat16", complex_A=True, B_layout="variable",
                         C_layout="constant", has_D=True, has_z=False, has_delta_bias=True,
                         delta_softplus=True, return_last_state=False, chunk_len=64)
