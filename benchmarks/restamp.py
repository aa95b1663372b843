"""Restamps the CUDA records of a cache file from one template hash to the current one, where the
kernels those records run render byte-identical in both trees (record_sources.py's JSON of each
tree, compared here): a template change that leaves every shipped kernel's source as it was needs
no re-tune. Records are not re-timed; each gets a `restamped` note naming the evidence.
Usage: python benchmarks/restamp.py CACHE.json OLD_SOURCES.json NEW_SOURCES.json 'why'"""
import json
import sys

from ssmgen import autotune


def main(cache, old_src, new_src, why):
    old, new = json.load(open(old_src)), json.load(open(new_src))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        sys.exit(f"not restamped: {len(changed)} kernel sources differ, e.g. {changed[:3]}")
    d = json.load(open(cache))
    now = autotune.template_hash("cuda")
    n = 0
    for r in d["records"]:
        if r["backend"] == "cuda" and r["template_hash"] != now:
            r["restamped"] = f"restamped {r['template_hash']} -> {now} ({why})"
            r["template_hash"] = now
            n += 1
    with open(cache, "w") as f:   # (tunecache's own format)
        f.write(json.dumps(d, indent=1, sort_keys=True))
    print(f"{n} CUDA records restamped to {now}; {len(new)} kernel sources identical")


if __name__ == "__main__":
    main(*sys.argv[1:5])
