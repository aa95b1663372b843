#!/usr/bin/env bash
# Device call (carry .whl): the SSD GPU tests of the default above d_state 128 (the walk at 8
# warps to 256, the split pass 2 above) and the hypothesis fuzz (d_state up to 140).
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_large_state
mkdir -p $R
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-330} python3 -m pytest -m gpu -v -p no:cacheprovider -rf tests/test_ssd_kernels.py -k "large_state or fuzz" > $R/gpu_tests.log 2>&1
grep -E "PASSED|FAILED|ERROR|passed|failed" $R/gpu_tests.log | tail -15
