#!/usr/bin/env bash
# Device call: where a tiny forward+backward spends its host time (benchmarks/host_profile.py
# train), with the peer built alongside for its numbers.
set -u
source benchmarks/device_setup.sh
R=$OUT/train_host; mkdir -p $R
(python3 benchmarks/build_peer.py "$SSMGEN_PEER_SRC" /tmp/peerbuild > $R/peer_build.log 2>&1; echo "peer build rc=$?" >> $R/peer_build.log) &
PEER_PID=$!
python3 -c "from ssmgen.backends import fastcall; print(fastcall.module())" > $R/build.log 2>&1
timeout ${PROF_S:-240} python3 benchmarks/host_profile.py train > $R/profile_nopeer.log 2>&1
grep -E "^---" $R/profile_nopeer.log
if [ "${PEER:-1}" = 1 ]; then
  wait $PEER_PID; tail -1 $R/peer_build.log
  PYTHONPATH=/tmp/peerbuild:${PYTHONPATH:-} timeout ${HOST_S:-200} python3 benchmarks/host_profile.py train > $R/profile.log 2>&1
  grep -E "^---" $R/profile.log
fi
