#!/usr/bin/env bash
# Device call for the inference scan's C++ launch (ssmgen.ops._make_fast): builds the extension
# (timed) and the peer (background), runs the GPU tests of the C++ launches and plans and the
# inner-chunk cases, then host_overhead.py (tiny scan forward with the launch on / off, the
# step, mamba-ssm's selective_scan_fn alongside).
set -u
source benchmarks/device_setup.sh
R=$OUT/infer; mkdir -p $R
(python3 benchmarks/build_peer.py "$SSMGEN_PEER_SRC" /tmp/peerbuild > $R/peer_build.log 2>&1; echo "peer build rc=$?" >> $R/peer_build.log) &
PEER_PID=$!
{ time python3 -c "from ssmgen.backends import fastcall; print(fastcall.module())"; } > $R/build.log 2>&1
tail -4 $R/build.log
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-10} timeout ${TEST_S:-200} python3 -m pytest -q -p no:cacheprovider -rf ${TESTS:-} \
  tests/test_fastcall.py tests/test_plans.py "tests/test_scan_numerics.py::test_inner_chunks_match_reference" \
  > $R/gpu_tests.log 2>&1
tail -6 $R/gpu_tests.log
wait $PEER_PID; tail -1 $R/peer_build.log
PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${HOST_S:-200} python3 benchmarks/host_overhead.py $R/host_overhead.json > $R/host_overhead.log 2>&1
grep -E "scan_fwd|scan_fwdbwd" $R/host_overhead.log | cut -c1-200
