#!/usr/bin/env bash
# One device call (nvidia-h100-x1; carrying .peer is optional, only device_setup.sh uses it):
# Nsight Compute profile of the shipped CUDA-backend forward and backward kernels on every m1_*
# suite shape (SHAPES overrides the list), one ncu run per shape over one forward + backward
# (benchmarks/profile_one.py SHAPE cuda), reports in $OUT/ncu_suite/<shape>.txt, then one
# markdown table of all of them (benchmarks/ncu_table.py) in $OUT/ncu_suite/table.md, printed at the end.
# First, one process runs each shape once without ncu (WARM=0 skips), so the kernels are
# compiled into $SSMGEN_CACHE_DIR before profiling and each ncu run's NCU_S (default 100 s) is
# spent on profiling; NCU_COUNT (default 4) kernels per shape: m1_long_bf16 runs 4 (fsplit, fwd,
# bsplit, bwd), the others 2. Sections: SECTIONS, default the eight below; dropping
# ComputeWorkloadAnalysis and MemoryWorkloadAnalysis saves passes (that loses DRAM GB/s and
# issue slots busy, the table then shows Issued Warp Per Scheduler). Estimated (not yet
# measured): ~5-6 min in all; a shape whose ncu hits NCU_S leaves no kernel report (ncu prints
# at exit), and the table says "(no kernel in report)" for it.
set -u
source benchmarks/device_setup.sh
SHAPES=${SHAPES:-"m1_130m_bf16 m1_1.4b_bf16 m1_long_bf16 m1_n64_bf16 m1_n128_bf16 m1_fp32 m1_cplx_fp32"}
SECTIONS=${SECTIONS:-"SpeedOfLight Occupancy WarpStateStats SchedulerStats InstructionStats LaunchStats ComputeWorkloadAnalysis MemoryWorkloadAnalysis"}
R=$OUT/ncu_suite
mkdir -p "$R"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
ncu --version | tail -1
if [ "${WARM:-1}" = 1 ]; then
  timeout ${WARM_S:-180} python3 - $SHAPES <<'EOF'
import runpy, sys, time
for s in sys.argv[1:]:
    t = time.time()
    sys.argv = ["profile_one.py", s, "cuda"]
    try:
        runpy.run_path("benchmarks/profile_one.py", run_name="__main__")
        print(f"warm {s}: {time.time() - t:.1f} s")
    except Exception as e:
        print(f"warm {s}: FAILED {type(e).__name__}: {e}")
EOF
fi
SECTION_ARGS=$(for s in $SECTIONS; do printf -- "--section %s " "$s"; done)
for s in $SHAPES; do
  t0=$SECONDS
  timeout ${NCU_S:-100} ncu --clock-control none -k "regex:ssmgen_cuda_(fwd|bwd|fsplit|bsplit)" \
    --launch-count ${NCU_COUNT:-4} $SECTION_ARGS \
    python3 benchmarks/profile_one.py "$s" cuda > "$R/$s.txt" 2>&1
  rc=$?
  echo "ncu $s: rc=$rc$([ $rc = 124 ] && echo ' (timed out)') $((SECONDS - t0)) s," \
    "$(grep -c '^==PROF== Profiling' "$R/$s.txt") kernels; $(grep -m1 -o '[0-9]* passes' "$R/$s.txt")"
  grep -E "^==ERROR==|^[A-Za-z_.]*Error" "$R/$s.txt" | head -3
done
python3 benchmarks/ncu_table.py $(for s in $SHAPES; do echo "$R/$s.txt"; done) > "$R/table.md"
cat "$R/table.md"
echo "total $SECONDS s"
# only 8 files come back from $OUT: the 7 reports and table.md (install.log only mattered if
# the install failed, and device_setup.sh stops there then)
rm -f "$OUT/install.log"
