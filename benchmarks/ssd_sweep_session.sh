#!/usr/bin/env bash
# Device call for one SSD sweep (carry .peer, .whl), then SSD GPU tests against float64:
#   bash benchmarks/ssd_sweep_session.sh ssd_walk_sweep walk    (the backward walk's configs)
#   bash benchmarks/ssd_sweep_session.sh ssd_pass2_sweep split  (pass 2 in one or two kernels)
# $1: benchmarks/$1.py, run as `$1.py OUT.json [shapes]` (SHAPES), its log's tail shown;
# $2: pytest's -k expression for tests/test_ssd_kernels.py (ssd_gpu_tests.sh).
set -u
source benchmarks/device_setup.sh
R=$OUT/$1
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${SWEEP_S:-400} python3 benchmarks/$1.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
grep -v "^$" $R/sweep.log | cut -c1-230 | tail -${SWEEP_TAIL:-80}
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-4} TEST_S=${TEST_S:-150} bash benchmarks/ssd_gpu_tests.sh "$2"
