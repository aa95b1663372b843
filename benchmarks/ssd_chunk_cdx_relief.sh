#!/usr/bin/env bash
# Device call (carry .peer, .whl): the shipped default against it with dz_walk and v_cdbc
# (cdx relieved of dz and of the states' part of d cum), with and without cdx's registers
# capped at 168, and with v_cdbc alone: each shape's default with those fields changed
# (ssd_chunk_compare.py's OVER), beside mamba-ssm through the public call on SHAPES (default
# ssd_long_bf16): medians, profiled kernel sums, peak memory, difference from the walk.
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-cdx_relief}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
export PEER=1 OVER="dz_walk=1,v_cdbc=1;dz_walk=1,v_cdbc=1,cdx_regs=168;v_cdbc=1"
timeout ${CMP_S:-200} python3 benchmarks/ssd_chunk_compare.py $R/cmp.json ${SHAPES:-ssd_long_bf16} > $R/cmp.log 2>&1
echo "compare rc $?"
grep -v -i "warn" $R/cmp.log | grep -v "^$" | cut -c1-180
