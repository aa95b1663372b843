"""One markdown table from Nsight Compute text reports (`ncu ... > FILE`, or `ncu -i X.ncu-rep
--page details`): `python benchmarks/ncu_table.py FILE...`.

Reads each file's kernel blocks (a line `  <kernel> (grid)x(block), Context ...` and the
`Section:` metric tables under it; the three columns are cut at the dashed rule's positions,
since names have spaces and units may be empty) and prints one row per kernel: shape (the file
name, less `.txt` and a leading `ncu_` / `ncu_fwd_` / `ncu_bwd_`), kernel (fwd/bwd/fsplit/bsplit,
the chunk `cN` and the config after `__`), duration in ms, DRAM (% of peak from Speed Of Light,
GB/s from Memory Workload Analysis' "Memory Throughput"), memory and compute (SM) throughput %
(Speed Of Light), registers per thread, achieved / theoretical occupancy %, issue slots busy %
(Compute Workload Analysis, else 100 x "Issued Warp Per Scheduler"), warp cycles per issued
instruction and executed instructions. A metric the report lacks prints as "-"; a file with no
kernel block gets one row saying so. Stall reasons are not printed: the text report gives no
per-reason values (only a rule's prose about the largest one).
"""
import re
import sys
from pathlib import Path

KERNEL = re.compile(r"^  (\S+) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\), Context")
TIME_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
BW_GBS = {"byte/s": 1e-9, "Kbyte/s": 1e-6, "Mbyte/s": 1e-3, "Gbyte/s": 1.0, "Tbyte/s": 1e3}
SOL, MWA = "GPU Speed Of Light Throughput", "Memory Workload Analysis"


def parse(path):
    """[(kernel name, {(section, metric): (unit, value)})] in file order."""
    kernels, section, spans, state = [], "", None, 0
    for line in Path(path).read_text(errors="replace").splitlines():
        m = KERNEL.match(line)
        if m:
            kernels.append((m.group(1), {}))
            section, state = "", 0
        elif line.startswith("    Section: "):
            section, state = line[13:].strip(), 0
        elif kernels and re.fullmatch(r"\s*-+ -+ -+\s*", line):
            spans = [r.span() for r in re.finditer(r"-+", line)]
            state = (state + 1) % 3  # 1: header row next, 2: metric rows, 0: table closed
        elif kernels and state == 2 and spans:
            name, unit, value = (line[a:b].strip() for a, b in
                                 ((spans[0][0], spans[1][0]), (spans[1][0], spans[2][0]),
                                  (spans[2][0], None)))
            kernels[-1][1][(section, name)] = (unit, value)
    return kernels


def num(metrics, section, name):
    """(value as a float, unit), or (None, '') where absent or not a number."""
    unit, value = metrics.get((section, name), ("", ""))
    try:
        return float(value.replace(",", "")), unit.replace("second", "s").replace("usec", "us")
    except ValueError:
        return None, ""


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def short(kernel):
    m = re.match(r"ssmgen_(?:cuda_)?(.+?)_n\d+_.*?(?:_c(\d+))?__(.+)$", kernel)
    if not m:
        return kernel
    kind, chunk, cfg = m.groups()
    return f"{kind} {'c' + chunk + ' ' if chunk else ''}{cfg}"


def row(shape, kernel, mt):
    dur, u = num(mt, SOL, "Duration")
    dur = dur * TIME_MS[u] if dur is not None and u in TIME_MS else None
    dram_pct, _ = num(mt, SOL, "DRAM Throughput")
    bw, u = num(mt, MWA, "Memory Throughput")
    bw = bw * BW_GBS[u] if bw is not None and u in BW_GBS else None
    dram = " / ".join(s for s in (dram_pct is not None and f"{dram_pct:.1f}%",
                                  bw is not None and f"{bw:.0f} GB/s") if s) or "-"
    issue, _ = num(mt, "Compute Workload Analysis", "Issue Slots Busy")
    if issue is None:
        per_sched, _ = num(mt, "Scheduler Statistics", "Issued Warp Per Scheduler")
        issue = None if per_sched is None else 100 * per_sched
    inst, _ = num(mt, "Instruction Statistics", "Executed Instructions")
    regs, _ = num(mt, "Launch Statistics", "Registers Per Thread")
    return [shape, short(kernel), fmt(dur, ".3f"), dram,
            fmt(num(mt, SOL, "Memory Throughput")[0]),
            fmt(num(mt, SOL, "Compute (SM) Throughput")[0]), fmt(regs, ".0f"),
            fmt(num(mt, "Occupancy", "Achieved Occupancy")[0]),
            fmt(num(mt, "Occupancy", "Theoretical Occupancy")[0]), fmt(issue),
            fmt(num(mt, "Warp State Statistics", "Warp Cycles Per Issued Instruction")[0], ".2f"),
            "-" if inst is None else f"{inst / 1e6:.1f}M"]


HEAD = ["shape", "kernel", "ms", "DRAM", "mem %", "SM %", "regs", "occ ach %", "occ theo %",
        "issue %", "cyc/issue", "exec inst"]


def main(paths):
    rows = []
    for p in paths:
        shape = re.sub(r"^ncu_((fwd|bwd)_)?", "", Path(p).name.removesuffix(".txt"))
        kernels = parse(p)
        rows += [row(shape, k, mt) for k, mt in kernels] or [
            [shape, "(no kernel in report)"] + ["-"] * (len(HEAD) - 2)]
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * 2 + "--:|" * (len(HEAD) - 2))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
