#!/usr/bin/env bash
# Device call after a template change: re-tune the shipped scan records (both backends, budgeted),
# run the gpu tests of the changed code, and the SSD comparison with mamba-ssm's Triton SSD.
# Results and the records ($OUT/records.json) land in $OUT. Needs `.peer/` carried.
set -u
source benchmarks/device_setup.sh
if [ "${TUNE:-1}" = 1 ]; then
  timeout 200 python3 -m ssmgen tune --backends cuda --budget-s ${CUDA_BUDGET:-150} 2>&1 | tr '\r' '\n' > "$OUT/tune_cuda.log"; grep -A10 "^tuned" "$OUT/tune_cuda.log"
  timeout 150 python3 -m ssmgen tune --backends triton --budget-s ${TRITON_BUDGET:-100} 2>&1 | tr '\r' '\n' > "$OUT/tune_triton.log"; grep -A10 "^tuned" "$OUT/tune_triton.log"
  cp "$SSMGEN_CACHE_DIR/autotune/records.json" "$OUT/records.json"
fi
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-10} timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider ${TESTS:-tests/test_ssd_kernels.py tests/test_variants.py} 2>&1 | tail -15 > "$OUT/gpu_tests.log"; cat "$OUT/gpu_tests.log"
# the non-finite input tests run on both backends where CUDA is present
[ "${FAULTS:-1}" = 1 ] && timeout ${FAULT_S:-120} python3 -m pytest -q -p no:cacheprovider tests/test_input_faults.py -k "like_the_reference or leak or nonfinite" 2>&1 | tail -15 > "$OUT/gpu_fault_tests.log"; cat "$OUT/gpu_fault_tests.log"
[ "${SSD:-1}" = 1 ] && timeout ${SSD_S:-120} python3 benchmarks/ssd_bench.py "$OUT/ssd_bench.json" 2>&1 | tail -8 | tee "$OUT/ssd_bench.log"
