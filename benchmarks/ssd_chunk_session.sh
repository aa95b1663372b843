#!/usr/bin/env bash
# Device call for the SSD chunk form (carry .peer, .whl): the kernel sweep with forward+backward
# side by side with mamba-ssm (ssd_chunk_sweep.py), then the SSD GPU tests of the chunk configs
# against float64.
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_chunk
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${SWEEP_S:-330} python3 benchmarks/ssd_chunk_sweep.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
grep -v "^$" $R/sweep.log | grep -v "^  q" | cut -c1-220 | tail -70
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-4} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py -k chunk} > $R/gpu_tests.log 2>&1
tail -15 $R/gpu_tests.log
