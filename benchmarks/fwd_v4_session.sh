#!/usr/bin/env bash
# One device call for the CUDA forward v4 (lane sums by reduce-scatter per group of 8 steps past
# 4 lanes per channel): A/B of the forward against the previous tree in two processes
# (benchmarks/bwd_ab_proc.py --kind fwd; old tree: `git archive` of the commit before, carried as
# .whl2/ssmgen_old.tar), the lane-sum GPU test, the vector/element forward test and the smoke
# cases. Carry .whl and .whl2.
set -u
source benchmarks/device_setup.sh
R=$OUT/fwd_v4; mkdir -p $R
mkdir -p /tmp/old && tar xf .whl2/ssmgen_old.tar -C /tmp/old
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/oldsite /tmp/old > $R/old_install.log 2>&1 || tail -5 $R/old_install.log
PYTHONPATH=/tmp/oldsite${PYTHONPATH:+:$PYTHONPATH} timeout ${AB_S:-150} python3 benchmarks/bwd_ab_proc.py --kind fwd --save /tmp/ab > $R/ab_old.json 2> $R/ab_old.log
tail -2 $R/ab_old.log; cut -c1-200 $R/ab_old.json
timeout ${AB_S:-150} python3 benchmarks/bwd_ab_proc.py --kind fwd --against /tmp/ab > $R/ab_new.json 2> $R/ab_new.log
tail -2 $R/ab_new.log; cut -c1-300 $R/ab_new.json
source benchmarks/forward_checks.sh
cd $OUT && tar czf fwd_v4.tgz fwd_v4 && rm -rf fwd_v4
