#!/usr/bin/env bash
# One device call after a re-tune (carry .peer and .whl): the CUDA gpu tests (backward lane and
# channel sums, splits, vector/element kernels, suite-like shapes, then the hypothesis cases as
# far as TEST_S allows) while the peer builds, then `ssmgen bench` on the suite side by side with
# mamba-ssm on a quiet host. NCU_FWD=SHAPE: first, ncu of that shape's CUDA forward at its record's
# config (memory, shared-memory and warp-state sections; the peer builds on the CPU meanwhile).
set -u
source benchmarks/device_setup.sh
R=$OUT/bench; mkdir -p $R
(python3 benchmarks/build_peer.py "$SSMGEN_PEER_SRC" /tmp/peerbuild > $R/peer_build.log 2>&1; echo "peer build rc=$?" >> $R/peer_build.log) &
PEER_PID=$!
if [ -n "${NCU_FWD:-}" ]; then
  timeout ${NCU_S:-90} ncu --clock-control none -k regex:ssmgen_cuda_fwd --launch-count 1 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
    --section Occupancy --section WarpStateStats --section SchedulerStats --section LaunchStats \
    python3 benchmarks/bwd_ab_proc.py --kind fwd --shapes $NCU_FWD > $R/ncu_fwd_$NCU_FWD.txt 2>&1
  grep -E "ssmgen_cuda|Duration|L1/TEX Cache Throughput|bank|Issued Warp" $R/ncu_fwd_$NCU_FWD.txt | head -12
fi
TESTS=${TESTS:-"tests/test_scan_numerics.py::test_lane_and_channel_sums_match_reference tests/test_cuda_backend.py tests/test_scan_numerics.py::test_split_sequences_match_reference tests/test_scan_numerics.py::test_suite_like_shape_cuda tests/test_scan_numerics.py::test_matches_reference_cuda"}
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-4} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rf \
  $TESTS > $R/gpu_tests.log 2>&1
tail -6 $R/gpu_tests.log
wait $PEER_PID; tail -1 $R/peer_build.log
PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${BENCH_S:-300} python3 -m ssmgen bench --out $R > $R/bench.log 2>&1
tail -32 $R/bench.log
cd $OUT && tar czf bench.tgz bench && rm -rf bench
