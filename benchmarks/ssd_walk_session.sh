#!/usr/bin/env bash
# Device call for the SSD backward walk (carry .peer, .whl): the sweep with forward+backward
# side by side with mamba-ssm (ssd_walk_sweep.py), then the walk's GPU tests against float64.
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_walk
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${SWEEP_S:-400} python3 benchmarks/ssd_walk_sweep.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
grep -v "^$" $R/sweep.log | cut -c1-230 | tail -${SWEEP_TAIL:-80}
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-4} timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py -k walk} > $R/gpu_tests.log 2>&1
tail -15 $R/gpu_tests.log
