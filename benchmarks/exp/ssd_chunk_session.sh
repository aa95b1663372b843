#!/usr/bin/env bash
# Device call (carry .peer, .whl): the chunk-form SSD experiment (exp/ssd_chunk_bench.py)
# against the shipped default and mamba-ssm, both ssd shapes.
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-ssd_chunk_v1}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
PEER=${PEER:-1} timeout ${BENCH_S:-540} python3 benchmarks/exp/ssd_chunk_bench.py $R/bench.json ${SHAPES:-} > $R/bench.log 2>&1
grep -v "^$" $R/bench.log | cut -c1-400 | tail -60
