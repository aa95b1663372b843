#!/usr/bin/env bash
# Sourced by the forward device-session scripts, after device_setup.sh, with R set: the GPU tests
# that cover the CUDA forward's tiles, lane sums and state layout (state runs, lane and channel
# sums, splits, vector / element variants) into $R/gpu_tests.log, then the smoke cases into
# $R/smoke.log. TEST_S / SMOKE_S: their time limits.
timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf \
  -k "state_runs or lane_and_channel_sums or vector_and_element_forwards or split_sequences" \
  tests/test_scan_numerics.py tests/test_cuda_backend.py > $R/gpu_tests.log 2>&1
tail -3 $R/gpu_tests.log
timeout ${SMOKE_S:-100} python3 benchmarks/cuda_smoke.py --no-time > $R/smoke.log 2>&1; tail -2 $R/smoke.log
