#!/usr/bin/env bash
# Device call for the Triton SSD kernels' sequence splits (carry .peer): GPU tests of both SSD
# backends against float64, the split sweep, the suite's ssd shapes side by side with mamba-ssm.
set -u
source benchmarks/device_setup.sh
R=$OUT/${NAME:-ssd_split}
mkdir -p $R
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-240} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py tests/test_ssd_cuda.py} 2>&1 | tail -30 > $R/gpu_tests.log
tail -15 $R/gpu_tests.log
if [ "${SWEEP_S:-150}" != 0 ]; then
  timeout ${SWEEP_S:-150} python3 benchmarks/ssd_split_sweep.py $R/split_sweep.json > $R/split_sweep.log 2>&1
  grep -v "^$" $R/split_sweep.log | cut -c1-250 | tail -30
fi
SSD_TORCH=0 timeout ${BENCH_S:-150} python3 benchmarks/ssd_bench.py $R/ssd_bench.json > $R/ssd_bench.log 2>&1
tail -8 $R/ssd_bench.log
