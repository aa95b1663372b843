#!/usr/bin/env bash
# Device call (carry .peer, .whl): the SSD chunk form against the walk and mamba-ssm through
# the public call (ssd_chunk_compare.py), then the GPU tests of the chunk form and the default.
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-ssd_chunk_final}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
if [ "${BENCH:-1}" = 1 ]; then
  PEER=${PEER:-1} timeout ${BENCH_S:-300} python3 benchmarks/ssd_chunk_compare.py $R/compare.json > $R/compare.log 2>&1
  grep -v "^$" $R/compare.log | grep -v "Warn\|warn" | cut -c1-200 | tail -75
fi
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rA tests/test_ssd_kernels.py -k "${TESTS:-chunk or fuzz or (reference_gpu and default)}" > $R/gpu_tests.log 2>&1
tail -8 $R/gpu_tests.log
grep -c PASSED $R/gpu_tests.log
