#!/usr/bin/env bash
# Device call: the GPU tests of the C++ launches, call plans and steps, and the CUDA forward's
# suite-like and split cases (after a change to the forward's launch path).
set -u
source benchmarks/device_setup.sh
R=$OUT/infer2; mkdir -p $R
python3 -c "from ssmgen.backends import fastcall; print(fastcall.module())" > $R/build.log 2>&1
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-6} timeout ${TEST_S:-300} python3 -m pytest -q -p no:cacheprovider -rf \
  tests/test_plans.py tests/test_fastcall.py tests/test_step.py \
  "tests/test_scan_numerics.py::test_suite_like_shape_cuda" \
  "tests/test_scan_numerics.py::test_split_sequences_match_reference" > $R/gpu_tests.log 2>&1
tail -5 $R/gpu_tests.log
