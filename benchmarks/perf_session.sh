#!/usr/bin/env bash
# Device calls for a kernel-template change (carry .peer), two calls:
# PHASE=1 checks the CUDA kernels against the float64 reference (the smoke cases, then the gpu
# tests in $TESTS1; stops there if they are wrong) and re-tunes the shipped records on a quiet
# host (benchmarks/tune_session.sh; Triton only for the shapes in TRITON_SHAPES, none by
# default) into $SSMGEN_CACHE_DIR and $OUT/records.json. Merge those into autotune_cache/
# before phase 2, which then needs no warm machine.
# PHASE=2 builds the peer (mamba-ssm, ~160 s), runs the suite side by side with it (`ssmgen
# bench`), an ncu profile of the CUDA forward and backward on $NCU_SHAPE, and the gpu tests in
# $TESTS2.
set -u
source benchmarks/device_setup.sh
if [ "${PHASE:-1}" = 1 ]; then
  timeout ${SMOKE_S:-150} python3 benchmarks/cuda_smoke.py --no-time 2>&1 | tee "$OUT/smoke.log" | tail -20
  grep -qE "FAIL|EXCEPTION" "$OUT/smoke.log" && { echo "smoke failed: no tuning"; exit 1; }
  SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-4} timeout ${TEST_S:-120} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS1:-tests/test_scan_numerics.py tests/test_step.py} 2>&1 | tail -30 | tee "$OUT/gpu_tests_1.log"
  grep -qE "failed|error" "$OUT/gpu_tests_1.log" && { echo "gpu tests failed: no tuning"; exit 1; }
  TRITON_SHAPES=${TRITON_SHAPES:-} bash benchmarks/tune_session.sh
else
  python3 benchmarks/build_peer.py "$SSMGEN_PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?"
  export PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-}
  timeout ${BENCH_S:-260} python3 -m ssmgen bench --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -32
  timeout ${NCU_S:-120} ncu --clock-control none -k regex:ssmgen_cuda --launch-count ${NCU_COUNT:-4} --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats --section InstructionStats --section LaunchStats python3 benchmarks/profile_one.py ${NCU_SHAPE:-m1_130m_bf16} cuda > "$OUT/ncu.txt" 2>&1; tail -3 "$OUT/ncu.txt"
  SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-4} SSMGEN_VARLEN_EXAMPLES=${SSMGEN_VARLEN_EXAMPLES:-10} timeout ${TEST2_S:-150} python3 -m pytest -q -p no:cacheprovider ${TESTS2:-tests/test_plans.py tests/test_variants.py tests/test_ssd_kernels.py} -m gpu 2>&1 | tail -8 | tee "$OUT/gpu_tests_2.log"
fi
