#!/usr/bin/env bash
# One device call: the GPU tests of deterministic mode, memory and the variants after the
# template change, then the deterministic mode's cost and the one-GPU long-sequence times.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} SSMGEN_CACHE_DIR=/tmp/ssmgen_cache
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -m gpu -v -s -p no:cacheprovider tests/test_memory.py tests/test_variants.py 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASS|FAIL|Error|passed|failed|MiB" | tail -40
timeout ${BENCH_TIMEOUT:-200} python3 benchmarks/det_and_long.py "$OUT/det_and_long.json" 2>&1 | tail -20
