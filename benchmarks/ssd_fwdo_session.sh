#!/usr/bin/env bash
# Device call (carry .peer, .whl): where dwalk's checkpoint load and sigma go (exp/
# walk_sigma_order.py, both ssd shapes), ssd_bench (its forward is now fwdo: no checkpoints
# without a backward) side by side with mamba-ssm, then the default's GPU tests.
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_fwdo
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${ORDER_S:-200} python3 benchmarks/exp/walk_sigma_order.py $R/sigma_order.json > $R/sigma_order.log 2>&1
grep -v "^$" $R/sigma_order.log | cut -c1-200 | tail -12
SSD_TORCH=0 SSD_CUDA=0 timeout ${BENCH_S:-200} python3 benchmarks/ssd_bench.py $R/ssd_bench.json > $R/ssd_bench.log 2>&1
grep -v "^$" $R/ssd_bench.log | cut -c1-200 | tail -14
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-4} timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py -k default} > $R/gpu_tests.log 2>&1
tail -8 $R/gpu_tests.log
