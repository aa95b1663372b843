#!/usr/bin/env bash
# Device call (carry .peer, .whl): the chunk-form SSD experiment (exp/ssd_chunk_bench.py:
# its candidates, then the shipped default, the package's chunk form and mamba-ssm through the
# public call), both ssd shapes; then the chunk form's GPU tests.
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-ssd_chunk_v1}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
PEER=${PEER:-1} timeout ${BENCH_S:-400} python3 benchmarks/exp/ssd_chunk_bench.py $R/bench.json ${SHAPES:-} > $R/bench.log 2>&1
grep -v "^$" $R/bench.log | cut -c1-300 | tail -70
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf tests/test_ssd_kernels.py -k "${TESTS:-chunk}" > $R/gpu_tests.log 2>&1
tail -8 $R/gpu_tests.log
