#!/usr/bin/env bash
# Device call for checkpoints every other block, as run (with ckpt_every2.patch applied;
# carry .peer, .whl, .base): the sweep script (now benchmarks/ssd_config_ab.py, whose CONFIGS
# default was then default + ckpt2) on this tree, side by side with mamba-ssm; the same on the
# commit before (.base: `git archive` of its package, installed apart), then GPU tests. The
# base.log's first line printed the tree's package (python -c puts the current folder first);
# the sweep script itself imported the installed one (its dfin and dwalk are the old kernels).
set -u
source benchmarks/device_setup.sh
R=$OUT/ssd_ckpt
mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $R/gpu.txt
PEER=1 timeout ${SWEEP_S:-300} python3 benchmarks/ssd_config_ab.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
grep -v "^$" $R/sweep.log | cut -c1-200 | tail -${SWEEP_TAIL:-70}
if [ -d .base ]; then
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/basepkg ./.base > $R/base_install.log 2>&1 || tail -5 $R/base_install.log
  PYTHONPATH=/tmp/basepkg:${PYTHONPATH:-} python3 -c "import ssmgen; print('base package:', ssmgen.__file__)" | tee $R/base.log
  CONFIGS='{"base": {}}' PYTHONPATH=/tmp/basepkg:${PYTHONPATH:-} timeout ${BASE_S:-200} python3 benchmarks/ssd_config_ab.py $R/base.json ${SHAPES:-} >> $R/base.log 2>&1
  grep -v "^$" $R/base.log | cut -c1-200 | tail -30
fi
SSMGEN_SSD_EXAMPLES=${SSMGEN_SSD_EXAMPLES:-4} timeout ${TEST_S:-150} python3 -m pytest -m gpu -q -p no:cacheprovider -rf ${TESTS:-tests/test_ssd_kernels.py -k ckpt2} > $R/gpu_tests.log 2>&1
tail -15 $R/gpu_tests.log
