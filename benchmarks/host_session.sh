#!/usr/bin/env bash
# One device call for the host-overhead change (call plans, direct launches): install, build the
# peer in the background while the gpu tests of the changed paths run, then the host-overhead
# comparison (benchmarks/host_overhead.py) and the suite benchmark (ssmgen bench), side by side
# with mamba-ssm. Results go to $OUT. Carry: .peer (mamba-ssm sdist, einops/packaging wheels).
set -u
source benchmarks/device_setup.sh
# a peer build brought back from an earlier call (carry .peerbuild) saves its ~160 s
if ls .peerbuild/selective_scan_cuda*.so >/dev/null 2>&1; then mkdir -p /tmp/peerbuild && cp .peerbuild/* /tmp/peerbuild/; fi
if ! ls /tmp/peerbuild/selective_scan_cuda*.so >/dev/null 2>&1; then
  (python3 benchmarks/build_peer.py "$SSMGEN_PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log"; mkdir -p "$OUT/peerbuild"; cp /tmp/peerbuild/selective_scan_cuda*.so "$OUT/peerbuild/") &
fi
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-6} timeout ${TEST_S:-160} python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_plans.py tests/test_step.py tests/test_api.py} -rf 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
wait; tail -2 "$OUT/peer_build.log" 2>/dev/null
export PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-}
timeout ${HOST_S:-120} python3 benchmarks/host_overhead.py "$OUT/host_overhead.json" 2>&1 | tail -40 | tee "$OUT/host_overhead.log"
[ "${BENCH:-1}" = 1 ] && timeout ${BENCH_S:-230} python3 -m ssmgen bench --out "$OUT" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -30
