# Sourced by the device-session scripts: environment, results folder $OUT, ssmgen installed
# in place, the peer's wheels (einops, packaging) and SSMGEN_PEER_SRC (the mamba-ssm sdist tree
# in the carried .peer/), and the test wheels of a carried .whl/ (pytest, hypothesis) on
# PYTHONPATH.
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/out} SSMGEN_CACHE_DIR=/tmp/ssmgen_cache
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
python3 -m pip install -q --no-index --no-deps .peer/*.whl >> "$OUT/install.log" 2>&1
export SSMGEN_PEER_SRC=$PWD/$(ls -d .peer/mamba_ssm-*/ | head -1)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
