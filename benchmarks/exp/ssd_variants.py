"""Hand-edited variants of the rendered SSD kernels (ssd_1.3b default config) for timing
experiments: string edits of the shipped source, so each differs from it in one idea."""
import re

# the head of the channel-block loop in the transposed ([BP, BQ] tile) variants
T_LOOP_HEAD = """        for p0 in range(0, P, BP):
            offs_p = p0 + tl.arange(0, BP)
            mask_p = offs_p < P
            m_pn = mask_p[:, None] & mask_n[None, :]
            st_off = offs_p[:, None] * N + offs_n[None, :]
            m_pq = mask_p[:, None] & mq[None, :]
            io_offT = (b64 * L + offs_q[None, :]) * H * P + h * P + offs_p[:, None]
            xT = tl.load(x_base + offs_q[None, :] * s_xl + offs_p[:, None] * s_xp, mask=m_pq, other=0.0)
            doutT = tl.load(dout_ptr + io_offT, mask=m_pq, other=0.0).to(tl.float32)
"""


def rep(s, old, new, count=1):
    assert s.count(old) == count, (old, s.count(old))
    return s.replace(old, new)

def noS(src):
    s = src
    s = rep(s, "            S_in = tl.load(ckpt_ptr + ck + st_off, mask=m_pn, other=0.0)\n", "")
    s = rep(s, "            CS = _dot(Ct, tl.trans(S_in))\n", "")
    s = rep(s, "            y = _dot(Wt, xt) + e[:, None] * CS\n",
            "            y = tl.load(ckpt_ptr + io_off + offs_p[None, :], mask=m_qp, other=0.0).to(tl.float32)\n")
    s = rep(s, "            y += Dv * xt.to(tl.float32)\n", "")
    s = rep(s, "            Oy += tl.sum(dy * CS, 1)\n", "")
    s = rep(s, "            sSd += tl.sum(tl.sum(S_in.to(tl.float32) * dS.to(tl.float32), 1), 0)\n", "")
    s = rep(s, "        U = DX * Lm\n",
            "        Oy = tl.load(ddt_ptr + (b64 * L + offs_q) * H + h, mask=mq, other=0.0).to(tl.float32)\n"
            "        sSd = tl.load(dA_ptr + (b64 * nblk + blk) * H + h)\n        U = DX * Lm\n")
    return s

def transposed(src, no_s=False):
    s = src
    start = s.index("        for p0 in range(0, P, BP):")
    end = s.index("        U = DX * Lm")
    y = ("            yT = tl.load(ckpt_ptr + io_offT, mask=m_pq, other=0.0).to(tl.float32)\n" if no_s else
         "            S_in = tl.load(ckpt_ptr + ck + st_off, mask=m_pn, other=0.0)\n"
         "            CST = _dot(S_in, CtT)\n"
         "            yT = _dot(xT, WtT) + e[None, :] * CST + Dv * xT.to(tl.float32)\n"
         "            Oy += tl.sum(dyT_ * CST, 0)\n"
         "            sSd += tl.sum(tl.sum(S_in.to(tl.float32) * dS.to(tl.float32), 1), 0)\n")
    body = f'''        WtT = tl.trans(Wt)
        CtT = tl.trans(Ct)
        BtT = tl.trans(Bt)
''' + T_LOOP_HEAD + f'''            dS = tl.load(dckpt_ptr + ck + st_off, mask=m_pn, other=0.0)
            Dv = tl.load(D_ptr + h)
            zT = tl.load(z_base + offs_q[None, :] * s_zl + offs_p[:, None] * s_zp, mask=m_pq, other=0.0)
            zf = zT.to(tl.float32)
            sz = tl.sigmoid(zf)
            dyT_ = tl.where(m_pq, doutT * zf * sz, 0.0)
{y}            dzT = doutT * yT * sz * (1.0 + zf * (1.0 - sz))
            tl.store(dz_ptr + io_offT, dzT.to(dz_ptr.dtype.element_ty), mask=m_pq)
            dyT = dyT_
            dytT = dyT.to(Ct.dtype)
            DX += _dot(tl.trans(dytT), xT)
            BdST = _dot(dS, BtT)
            Tx += tl.sum(xT.to(tl.float32) * BdST, 0)
            dxT = _dot(dytT, Wt) + tail_dt[None, :] * BdST
            dxT += Dv * dyT
            dDh += tl.sum(tl.sum(dyT * xT.to(tl.float32), 1), 0)
            tl.store(dx_ptr + io_offT, dxT.to(dx_ptr.dtype.element_ty), mask=m_pq)
'''
    if no_s:
        body += ("        Oy = tl.load(ddt_ptr + (b64 * L + offs_q) * H + h, mask=mq, other=0.0).to(tl.float32)\n"
                 "        sSd = tl.load(dA_ptr + (b64 * nblk + blk) * H + h)\n")
    return s[:start] + body + s[end:]

def dbc_oy(src):
    """dbc that also forms each head's Oy = sum_n C * (dy S) and sum S*dS (stored to proxies)."""
    s = src
    s = rep(s, "        DX = tl.zeros([BQ, BQ], dtype=tl.float32)\n",
            "        DX = tl.zeros([BQ, BQ], dtype=tl.float32)\n        T1 = tl.zeros([BQ, NP], dtype=tl.float32)\n"
            "        sSd = tl.sum(tl.zeros([BQ], dtype=tl.float32), 0)\n")
    s = rep(s, "            dC_acc = _dot((e[:, None] * dy).to(xt.dtype), S_in, dC_acc)\n",
            "            T1 = _dot(dy.to(xt.dtype), S_in, T1)\n"
            "            sSd += tl.sum(tl.sum(S_in.to(tl.float32) * dS.to(tl.float32), 1), 0)\n")
    s = rep(s, "        Vs += DX * Lm * dt[None, :]\n",
            "        Vs += DX * Lm * dt[None, :]\n"
            "        dC_acc += e[:, None] * T1\n"
            "        Oy = tl.sum(T1 * Cq.to(tl.float32), 1)\n"
            "        tl.store(dB_ptr + (b64 * L + offs_q) * H + h, Oy, mask=mq)\n"
            "        tl.store(dC_ptr + (b64 * nblk + blk) * H + h, sSd)\n")
    s = rep(s, "    for hh in range(0, hpg):\n",
            "    offs_q0 = tl.arange(0, BQ).to(tl.int64) + blk * BQ\n"
            "    Cq = tl.load(C_ptr + b.to(tl.int64) * s_Cb + g * s_Cg + tl.arange(0, NP)[None, :] * s_Cn + offs_q0[:, None] * s_Cl, mask=(offs_q0 < L)[:, None] & (tl.arange(0, NP) < N)[None, :], other=0.0)\n"
            "    for hh in range(0, hpg):\n")
    return s

def dbc_T(src):
    """dbc with dB^T / dC^T [N, BQ] accumulators, so the K=BP products are M=N wgmma tiles."""
    s = src
    s = rep(s, "    dC_acc = tl.zeros([BQ, NP], dtype=tl.float32)\n",
            "    dCT_acc = tl.zeros([NP, BQ], dtype=tl.float32)\n")
    s = rep(s, "    dB_acc = tl.zeros([BQ, NP], dtype=tl.float32)\n",
            "    dBT_acc = tl.zeros([NP, BQ], dtype=tl.float32)\n")
    start = s.index("        for p0 in range(0, P, BP):")
    end = s.index("        Vs += DX * Lm * dt[None, :]")
    body = T_LOOP_HEAD + '''            zT = tl.load(z_base + offs_q[None, :] * s_zl + offs_p[:, None] * s_zp, mask=m_pq, other=0.0)
            zf = zT.to(tl.float32)
            dyT = tl.where(m_pq, doutT * zf * tl.sigmoid(zf), 0.0)
            S_in = tl.load(ckpt_ptr + ck + st_off, mask=m_pn, other=0.0)
            dS = tl.load(dckpt_ptr + ck + st_off, mask=m_pn, other=0.0)
            DX = _dot(tl.trans(dyT.to(xT.dtype)), xT, DX)
            dCT_acc = _dot(tl.trans(S_in), (e[None, :] * dyT).to(xT.dtype), dCT_acc)
            dBT_acc = _dot(tl.trans(dS), (tail_dt[None, :] * xT.to(tl.float32)).to(xT.dtype), dBT_acc)
'''
    s = s[:start] + body + s[end:]
    s = rep(s, "    dC_acc = _dot(Vt, Bt, dC_acc)\n", "    dCT_acc = _dot(tl.trans(Bt), tl.trans(Vt), dCT_acc)\n")
    s = rep(s, "    dB_acc = _dot(tl.trans(Vt), Ct, dB_acc)\n", "    dBT_acc = _dot(tl.trans(Ct), Vt, dBT_acc)\n")
    s = rep(s, "    tl.store(dB_ptr + bc_off, dB_acc.to(dB_ptr.dtype.element_ty), mask=m_qn)\n",
            "    tl.store(dB_ptr + bc_off, tl.trans(dBT_acc).to(dB_ptr.dtype.element_ty), mask=m_qn)\n")
    s = rep(s, "    tl.store(dC_ptr + bc_off, dC_acc.to(dC_ptr.dtype.element_ty), mask=m_qn)\n",
            "    tl.store(dC_ptr + bc_off, tl.trans(dCT_acc).to(dC_ptr.dtype.element_ty), mask=m_qn)\n")
    return s


def fwd_T(src):
    s = src
    start = s.index("        m_qp = mq[:, None] & mask_p[None, :]")
    body = '''        m_pq = mask_p[:, None] & mq[None, :]
        m_qn = mq[:, None] & mask_n[None, :]
        Bt = tl.load(B_base + offs_q[:, None] * s_Bl, mask=m_qn, other=0.0)
        Ct = tl.load(C_base + offs_q[:, None] * s_Cl, mask=m_qn, other=0.0)
        xT = tl.load(x_base + offs_q[None, :] * s_xl + offs_p[:, None] * s_xp, mask=m_pq, other=0.0)
        CB = _dot(Ct, tl.trans(Bt))
        W = tl.where(causal, CB * tl.exp(cum[:, None] - cum[None, :]), 0.0) * dt[None, :]
        yT = _dot(xT, tl.trans(W.to(xT.dtype)))
        yT += tl.exp(cum)[None, :] * _dot(S.to(Ct.dtype), tl.trans(Ct))
        xsT = xT.to(tl.float32) * (dt * tl.exp(tot - cum))[None, :]
        S = tl.exp(tot) * S + _dot(xsT.to(Bt.dtype), Bt)
        yT += Dv * xT.to(tl.float32)
        zT = tl.load(z_base + offs_q[None, :] * s_zl + offs_p[:, None] * s_zp, mask=m_pq, other=0.0)
        zf = zT.to(tl.float32)
        yT = yT * zf * tl.sigmoid(zf)
        tl.store(out_base + offs_q[None, :] * H * P + offs_p[:, None], yT.to(out_ptr.dtype.element_ty), mask=m_pq)
'''
    return s[:start] + body

# variants_run1.json
RUN1 = {"fwd": {"base": lambda s: s, "T": fwd_T},
        "bwdx": {"base": lambda s: s, "noS": noS, "T": transposed,
                 "noS_T": lambda s: transposed(s, True)},
        "dbc": {"base": lambda s: s, "oy": dbc_oy, "T": dbc_T}}


def noS_wx(src):
    """bwdx reading the saved pre-gate y: dz from it, e*Oy = sum_p dy * (y - W x - D x) (no S_in,
    no C S^T); sum S*dS read from dbc (proxy)."""
    s = src
    s = rep(s, "            S_in = tl.load(ckpt_ptr + ck + st_off, mask=m_pn, other=0.0)\n", "")
    s = rep(s, "            CS = _dot(Ct, tl.trans(S_in))\n", "")
    s = rep(s, "            y = _dot(Wt, xt) + e[:, None] * CS\n",
            "            y = tl.load(ckpt_ptr + io_off + offs_p[None, :], mask=m_qp, other=0.0).to(tl.float32)\n"
            "            eCS = y - _dot(Wt, xt)\n")
    s = rep(s, "            y += Dv * xt.to(tl.float32)\n", "            eCS -= Dv * xt.to(tl.float32)\n")
    s = rep(s, "            Oy += tl.sum(dy * CS, 1)\n", "            Oy += tl.sum(dy * eCS, 1)\n")
    s = rep(s, "            sSd += tl.sum(tl.sum(S_in.to(tl.float32) * dS.to(tl.float32), 1), 0)\n", "")
    s = rep(s, "+ e * Oy - T", "+ Oy - T")
    s = rep(s, "        U = DX * Lm\n",
            "        sSd = tl.load(dA_ptr + (b64 * nblk + blk) * H + h)\n        U = DX * Lm\n")
    return s


def dbc_ssd(src):
    """dbc that also sums S*dS per head and block (stored to a proxy)."""
    s = src
    s = rep(s, "        DX = tl.zeros([BQ, BQ], dtype=tl.float32)\n",
            "        DX = tl.zeros([BQ, BQ], dtype=tl.float32)\n"
            "        sSd = tl.sum(tl.zeros([BQ], dtype=tl.float32), 0)\n")
    s = rep(s, "            dB_acc = _dot(",
            "            sSd += tl.sum(tl.sum(S_in.to(tl.float32) * dS.to(tl.float32), 1), 0)\n"
            "            dB_acc = _dot(")
    s = rep(s, "        Vs += DX * Lm * dt[None, :]\n",
            "        Vs += DX * Lm * dt[None, :]\n"
            "        tl.store(dC_ptr + (b64 * nblk + blk) * H + h, sSd)\n")
    return s


# variants_run2.json
RUN2 = {"bwdx": {"base": lambda s: s, "noS": noS, "noS_wx": noS_wx},
        "dbc": {"base": lambda s: s, "ssd": dbc_ssd}}


# -- ablations of the kernels after fwdy / dstatey (acc96e7): what each part of bwdx and
# dstatey costs (timing only: each drops a term)
def bwdx_no_dS(src):
    s = src
    s = rep(s, "            dS = tl.load(dckpt_ptr + ck + st_off, mask=m_pn, other=0.0)\n", "")
    s = rep(s, "            BdS = _dot(Bt, tl.trans(dS))\n", "")
    s = rep(s, "            Tx += tl.sum(xt.to(tl.float32) * BdS, 1)\n", "")
    return rep(s, " + tail_dt[:, None] * BdS", "")


def bwdx_no_y(src):
    return rep(src, "            y = _dot(Wt, xt) + Yi\n", "            y = Yi\n")


def bwdx_no_DX(src):
    return rep(src, "            DX += _dot(dyt, tl.trans(xt))\n", "")


def dstatey_load_only(src):
    return rep(src, "etot * tl.sum(tl.sum(S_in * dS, 1), 0))", "etot * tl.sum(tl.sum(S_in, 1), 0))")


def dstatey_nosig(src):
    s = rep(src, "etot * tl.sum(tl.sum(S_in * dS, 1), 0))", "etot)")
    i = s.index("        S_in = tl.load(ckpt_ptr")
    j = s.index("other=0.0).to(tl.float32)\n", i) + len("other=0.0).to(tl.float32)\n")
    return s[:i] + s[j:]


ABLATIONS = {"bwdx": {"base": lambda s: s, "no_dS": bwdx_no_dS, "no_y": bwdx_no_y,
                      "no_DX": bwdx_no_DX},
             "dstatey": {"base": lambda s: s, "load_only": dstatey_load_only,
                         "nosig": dstatey_nosig}}


def dbc_dx_inter(src):
    """dbc that also forms each head's B dS^T: the inter-block part of dx, tail dt B dS^T (stored
    to a proxy, x-sized) and Tx = sum_p x B dS^T (stored to a proxy) (timing only)."""
    s = src
    s = rep(s, "    for hh in range(0, hpg):\n",
            "    offs_q0 = tl.arange(0, BQ).to(tl.int64) + blk * BQ\n"
            "    Bq = tl.load(B_ptr + b.to(tl.int64) * s_Bb + g * s_Bg + tl.arange(0, NP)[None, :] * s_Bn"
            " + offs_q0[:, None] * s_Bl, mask=(offs_q0 < L)[:, None] & (tl.arange(0, NP) < N)[None, :],"
            " other=0.0)\n"
            "    for hh in range(0, hpg):\n")
    s = rep(s, "        DX = tl.zeros([BQ, BQ], dtype=tl.float32)\n",
            "        DX = tl.zeros([BQ, BQ], dtype=tl.float32)\n        Tx = tl.zeros([BQ], dtype=tl.float32)\n")
    s = rep(s, "            DX = _dot(dy.to(xt.dtype), tl.trans(xt), DX)\n",
            "            DX = _dot(dy.to(xt.dtype), tl.trans(xt), DX)\n"
            "            BdS = _dot(Bq, tl.trans(dS))\n"
            "            Tx += tl.sum(xt.to(tl.float32) * BdS, 1)\n"
            "            tl.store(ckpt_ptr + io_off + offs_p[None, :], (tail_dt[:, None] * BdS).to(ckpt_ptr.dtype.element_ty), mask=m_qp)\n")
    s = rep(s, "        Vs += DX * Lm * dt[None, :]\n",
            "        Vs += DX * Lm * dt[None, :]\n"
            "        tl.store(dC_ptr + (b64 * L + offs_q) * H + h, Tx.to(dC_ptr.dtype.element_ty), mask=mq)\n")
    return s


def bwdx_dx_inter(src):
    """bwdx reading the inter-block part of dx and Tx (proxies) instead of dS (timing only)."""
    s = bwdx_no_dS(src)
    s = rep(s, "            dx += Dv * dy\n",
            "            dx += Dv * dy\n"
            "            dx += tl.load(dckpt_ptr + io_off + offs_p[None, :], mask=m_qp, other=0.0).to(tl.float32)\n")
    return rep(s, "        T = tail_dt * Tx\n",
               "        Tx = tl.load(ddt_ptr + (b64 * L + offs_q) * H + h, mask=mq, other=0.0).to(tl.float32)\n"
               "        T = tail_dt * Tx\n")


ABLATIONS2 = {"dbc": {"base": lambda s: s, "dx_inter": dbc_dx_inter},
              "bwdx": {"base": lambda s: s, "dx_inter": bwdx_dx_inter}}
