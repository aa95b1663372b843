#!/usr/bin/env bash
# Device call for inner chunks (CUDA backward config ic): the GPU tests that cover the backward
# (inner-chunk cases, splits, lane sums, the hypothesis CUDA cases, the memory test), the
# inner-chunk A/B (benchmarks/inner_chunks.py), then `ssmgen tune --keep-fwd` of m1_n128
# (its record must move to chunk 256 under the memory rule; records to $OUT/records.json).
set -u
source benchmarks/device_setup.sh
R=$OUT/inner; mkdir -p $R
SSMGEN_EXAMPLES=${SSMGEN_EXAMPLES:-6} timeout ${TEST_S:-200} python3 -m pytest -m gpu -q -p no:cacheprovider -rf \
  "tests/test_scan_numerics.py::test_inner_chunks_match_reference" \
  "tests/test_scan_numerics.py::test_split_sequences_match_reference" \
  "tests/test_scan_numerics.py::test_lane_and_channel_sums_match_reference" \
  tests/test_memory.py "tests/test_scan_numerics.py::test_suite_like_shape_cuda" \
  "tests/test_scan_numerics.py::test_matches_reference_cuda" > $R/gpu_tests.log 2>&1
tail -6 $R/gpu_tests.log
timeout ${AB_S:-120} python3 benchmarks/inner_chunks.py $R/inner_chunks.json > $R/inner_chunks.log 2>&1
cut -c1-400 $R/inner_chunks.log
timeout ${TUNE_S:-200} python3 -m ssmgen tune --backends cuda --shapes ${TUNE_SHAPES:-m1_n128_bf16} \
  --max-bwd ${MAX_BWD:-16} --budget-s ${BUDGET:-170} --keep-fwd 2>&1 | tr '\r' '\n' > $R/tune_cuda.log
grep -A8 "^tuned" $R/tune_cuda.log | head -20
cp "$SSMGEN_CACHE_DIR/autotune/records.json" $OUT/records.json 2>/dev/null
