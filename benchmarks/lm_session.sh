#!/usr/bin/env bash
# One device call for the model-level runs (issue: plug into models): install, build the peer's
# selective_scan_cuda in the background, run the gpu tests of the mixer (CUDA-graph decoding),
# train the byte-level LM with ssmgen's scan next to the float64 reference path (loss curves),
# time training tokens/s next to mamba-ssm's own Mamba module, and time decoding (eager vs CUDA
# graph). Needs .peer/ (the mamba-ssm sdist tree and the einops / packaging wheels) carried.
set -u
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} SSMGEN_CACHE_DIR=/tmp/ssmgen_cache
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .peer/*.whl > "$OUT/install.log" 2>&1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >> "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
PEER_SRC=$(ls -d .peer/mamba_ssm-*/ | head -1)
export SSMGEN_PEER_SRC=$PWD/$PEER_SRC
(python3 benchmarks/build_peer.py "$PEER_SRC" /tmp/peerbuild > "$OUT/peer_build.log" 2>&1; echo "peer build rc=$?" >> "$OUT/peer_build.log") &
PEER_PID=$!
timeout ${TEST_TIMEOUT:-150} python3 -m pytest -m gpu -v -p no:cacheprovider tests/test_nn.py 2>&1 | tee "$OUT/gpu_tests_nn.log" | grep -E "PASS|FAIL|Error|passed|failed" | tail -20
# loss curves: ssmgen's CUDA scan vs the float64 reference scan path, same seed and batches
timeout ${CURVE_TIMEOUT:-200} python3 examples/train_lm.py --steps ${CURVE_STEPS:-300} --scan cuda --compare reference \
  --d-model 256 --n-layer 2 --seq-len 256 --batch 16 --eval-every 50 --out "$OUT/lm_curves" 2>&1 | tr '\r' '\n' | grep -v "^ *ssmgen-.*\[" | tee "$OUT/lm_curves.log" | tail -4
wait $PEER_PID; tail -1 "$OUT/peer_build.log"
# throughput: a larger model in bf16, ssmgen's CUDA and Triton scans next to mamba-ssm's Mamba
PYTHONPATH=/tmp/peerbuild timeout ${TPUT_TIMEOUT:-150} python3 examples/train_lm.py --steps 60 --scan cuda --compare triton --peer \
  --dtype bfloat16 --d-model 768 --n-layer 4 --seq-len 2048 --batch 8 --eval-every 60 --out "$OUT/lm_tput" 2>&1 | tr '\r' '\n' | grep -v "^ *ssmgen-.*\[" | tee "$OUT/lm_tput.log" | tail -5
for b in 1 16; do
  PYTHONPATH=/tmp/peerbuild timeout 100 python3 examples/generate.py "$OUT/lm_curves/model.pt" --prompt "def " --n 256 --batch $b --time --peer 2>&1 | tee "$OUT/generate_b$b.log" | grep -E "decoding|mamba-ssm|Error"
done
head -c 600 "$OUT/generate_b1.log"
timeout 100 python3 benchmarks/decode_profile.py "$OUT/lm_curves/model.pt" > "$OUT/decode_profile.txt" 2>&1; head -3 "$OUT/decode_profile.txt"
# one archive comes back (the device returns few files); the models stay behind
rm -f "$OUT"/lm_*/model.pt
tar czf /tmp/lm_results.tgz -C "$OUT" . && rm -rf "$OUT"/* && mv /tmp/lm_results.tgz "$OUT/"
