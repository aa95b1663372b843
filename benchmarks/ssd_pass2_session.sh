#!/usr/bin/env bash
# Device call for the SSD pass-2 split (carry .peer, .whl): the bwd / bwdx / dbc sweep with the
# split's gradients against the one kernel's, forward+backward side by side with mamba-ssm, then
# the SSD GPU tests against float64 (split configs included).
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_pass2
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${SWEEP_S:-330} python3 benchmarks/ssd_pass2_sweep.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
grep -v "^$" $R/sweep.log | cut -c1-220 | tail -60
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py} 2>&1 | tail -30 > $R/gpu_tests.log
tail -12 $R/gpu_tests.log
