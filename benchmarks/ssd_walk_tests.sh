#!/usr/bin/env bash
# Device call (carry .whl): the SSD GPU tests of the walk's non-default configs (32 channels
# per program, so two channel blocks' parts per step for dfin; sequence splits with packed
# sequences), against float64.
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_walk_tests
mkdir -p $R
timeout ${TEST_S:-280} python3 -m pytest -m gpu -v -p no:cacheprovider -rf tests/test_ssd_kernels.py -k "walk_p32_w8_s2 or walk_splits" > $R/gpu_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $R/gpu_tests.log | tail -14
