#!/usr/bin/env bash
# Device call (carry .peer, .whl): the SSD GPU tests against float64 that pytest -k "$1" selects
# in tests/test_ssd_kernels.py, e.g.
#   bash benchmarks/ssd_gpu_tests.sh "large_state or fuzz"            (the default above d_state 128)
#   bash benchmarks/ssd_gpu_tests.sh "walk_p32_w8_s2 or walk_splits"  (the walk's other configs)
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_gpu_tests
mkdir -p $R
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-300} python3 -m pytest -m gpu -v -p no:cacheprovider -rf tests/test_ssd_kernels.py -k "$1" > $R/gpu_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $R/gpu_tests.log | tail -15
