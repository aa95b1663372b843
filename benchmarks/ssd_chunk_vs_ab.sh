#!/usr/bin/env bash
# Device call (carry .peer, .whl): the default through the public call with a change applied
# (PATCH: a patch file in the tree, against the committed tree; beside mamba-ssm), then
# without it, on both ssd shapes. Results under $OUT/${RUN:-vs_ab}: cmp_new.*, cmp_old.*.
# The patch is named, not taken from `git diff`: the device's copy carries the working tree's
# files but its git HEAD can be an earlier commit (seen in round 7: `git diff` there held the
# whole session's commits, so "without" ran the session's starting default).
set -u
source benchmarks/device_setup.sh
R=$OUT/${RUN:-vs_ab}
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
show() { grep -v -i "warn" $1 | grep -v "^$" | grep -v "^        0\.0" | grep -v " walk" | cut -c1-150; }
git apply $PATCH || exit 1
PEER=1 timeout ${NEW_S:-170} python3 benchmarks/ssd_chunk_compare.py $R/cmp_new.json \
  ssd_long_bf16 ssd_1.3b_bf16 > $R/cmp_new.log 2>&1
echo "compare (change) rc $?"; show $R/cmp_new.log
git apply -R $PATCH && timeout ${OLD_S:-130} python3 benchmarks/ssd_chunk_compare.py \
  $R/cmp_old.json ssd_long_bf16 ssd_1.3b_bf16 > $R/cmp_old.log 2>&1
echo "compare (without) rc $?"; show $R/cmp_old.log
