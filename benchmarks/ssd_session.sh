#!/usr/bin/env bash
# Device session: SSD Triton kernels. Config sweep side by side with mamba-ssm's Triton SSD,
# then the GPU tests. Needs `.peer/` (mamba-ssm sdist + einops/packaging wheels) carried.
set -x
R=$OUT/ssd_v1
mkdir -p $R
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > $R/install.log 2>&1
python3 -m pip install -q --no-index --no-deps .peer/*.whl >> $R/install.log 2>&1
export SSMGEN_CACHE_DIR=/tmp/ssmgen_cache SSMGEN_PEER_SRC=$PWD/.peer/mamba_ssm-2.3.2.post1/
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv > $R/gpu.txt
timeout ${SWEEP_S:-330} python3 benchmarks/ssd_sweep.py $R/sweep.json ${SHAPES:-} > $R/sweep.log 2>&1
timeout ${TEST_S:-150} python3 -m pytest -q -x -m gpu tests/test_ssd_kernels.py > $R/gpu_tests.log 2>&1
tail -5 $R/gpu_tests.log
cat $R/sweep.log | tail -40
