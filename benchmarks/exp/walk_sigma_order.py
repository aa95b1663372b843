"""GPU experiment: where in the walk's block body (kind dwalk) the checkpoint load and sigma
go. Hand-edited copies of the rendered dwalk that compute the same thing in another order
(checked: every output against the unedited kernel's), each launched alone on the arguments of
the default's backward, on both suite ssd shapes (walk_ablations.time_variants).

ssd_ckpt_v1 measured the contiguous per-step parts together with sigma moved after the parts:
dwalk 1.379 -> 1.318 ms on ssd_1.3b but 2.698 -> 2.756 on ssd_long. This separates the two.

Usage: python benchmarks/exp/walk_sigma_order.py OUT.json
"""
import json
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ssd_variants import rep  # noqa: E402
from walk_ablations import time_variants  # noqa: E402

LOAD = ("        S_in = tl.load(ckpt_ptr + ck_base + blk * P * N + st_off, mask=m_pn,\n"
        "                       other=0.0).to(tl.float32)\n")
SIG = "        sig = etot * tl.sum(tl.sum(S_in * dS, 1), 0)\n"
R_SIG = ("        r += tl.where(offs_q == tl.minimum(blk * BQ + BQ, L) - 1, sig + tl.sum(T, 0), "
         "0.0)\n")
STORE_R = "        tl.store(rp_ptr + part, r, mask=mq)\n"
STORE_G = "        tl.store(gp_ptr + part, gv, mask=mq)\n"
TOP = "        offs_q = ar.to(tl.int64) + blk * BQ\n"


def late(load_too):
    """sigma (and the load where load_too) after gv's store, r stored after it."""
    def f(s):
        s = rep(s, SIG, "")
        s = rep(s, R_SIG, "")
        s = rep(s, STORE_R, "")
        if load_too:
            s = rep(s, LOAD, "")
        return rep(s, STORE_G, STORE_G + (LOAD if load_too else "") + SIG + R_SIG + STORE_R)
    return f


def load_at_top(s):
    """the checkpoint load first in the block body, before the other loads."""
    s = rep(s, LOAD, "")
    return rep(s, TOP, TOP + LOAD)


VARIANTS = {
    "base": lambda s: s,
    "late_sigma": late(True),
    "late_product": late(False),
    "load_at_top": load_at_top,
}


def main():
    res = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for shape in ("ssd_1.3b_bf16", "ssd_long_bf16"):
        res["shapes"][shape] = time_variants(shape, VARIANTS, check=True)
        with open(sys.argv[1], "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
