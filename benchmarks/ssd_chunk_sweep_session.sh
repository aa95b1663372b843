#!/usr/bin/env bash
# Device call (carry .peer, .whl): the chunk form's config sweep (ssd_chunk_sweep.py) on the
# suite's ssd shapes, with the best configs against the walk, the shipped default and
# mamba-ssm through the public call; then, where TESTS names them (pytest -k), the GPU tests
# of test_ssd_kernels.py. Results under $OUT/${RUN:-ssd_chunk_sweep}.
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-ssd_chunk_sweep}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${SWEEP_S:-480} python3 benchmarks/ssd_chunk_sweep.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
echo "sweep rc $?"
grep -v "^$" $R/sweep.log | grep -v "Warn\|warn" | grep "compiled\|failed\|===\|best of\|f+b\|^      " | cut -c1-180
if [ "${TESTS:-}" != "" ]; then
  SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-6} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rA tests/test_ssd_kernels.py -k "$TESTS" > $R/gpu_tests.log 2>&1
  echo "tests rc $?"; grep -c PASSED $R/gpu_tests.log; grep "FAILED\|Error" $R/gpu_tests.log | head -20; tail -3 $R/gpu_tests.log
fi
