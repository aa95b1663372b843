#!/usr/bin/env bash
# One device call after a refactor whose record kernels compile to the same SASS: the GPU tests
# of the touched mechanisms (lane and channel sums, splits, vector/element kernels, memory,
# determinism) and the smoke cases. Carry .whl.
set -u
source benchmarks/device_setup.sh
R=$OUT/review; mkdir -p $R
timeout ${TEST_S:-300} python3 -m pytest -m gpu -q -p no:cacheprovider -rf \
  -k "lane_and_channel_sums or vector_and_element or split_sequences or (memory and cuda) or (bit_identical and cuda)" \
  tests/test_scan_numerics.py tests/test_cuda_backend.py tests/test_memory.py tests/test_variants.py > $R/gpu_tests.log 2>&1
tail -6 $R/gpu_tests.log
timeout ${SMOKE_S:-120} python3 benchmarks/cuda_smoke.py --no-time > $R/smoke.log 2>&1; tail -3 $R/smoke.log
cd $OUT && tar czf review.tgz review && rm -rf review
