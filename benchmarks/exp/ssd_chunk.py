"""Experiment: the SSD forward+backward in chunk form (states only at chunk boundaries, every
within-chunk product a [T, T] or [T, N] tensor-core tile in a K loop), to measure against the
shipped 32-step walk. Plain Triton, no packed sequences, initial state or splits: a measurement
first, templates after, if it pays.

Chunk of Q = NT * T steps, tiles of T steps. Per (batch row b, head h, chunk c), a_t = dt'_t A,
cum_t = sum of a within the chunk up to t, tot = cum at the chunk's last step, S_c the state
entering chunk c ([P, N]), dS_c the gradient of the state leaving it.

Kernels:
  ccum  (chunk, head, row)        dt' (bias, softplus, clamp) and cum, fp32 (b, H, L)
  cst   (channel block, head, row) walks the chunks: stores S_c (bf16), S <- e^tot S + local
  cout  (chunk tile, head, row)   y_t = e^cum_t C_t S_c^T + sum_{s<=t} (C_t.B_s) e^(cum_t-cum_s) dt'_s x_s
                                  + D x_t; out = y silu(z); y before the gate saved
  cdst  (channel block, head, row) walks the chunks from the end: stores dS_c, sigma_c =
                                  e^tot <S_c, dS_c>; dS <- e^tot dS + sum_t e^cum_t C_t^T dy_t
  cdx   (chunk tile, head, row)   source tile s: G_s = e^(tot-cum_s) B_s dS_c^T + sum_{t>=s}
                                  (B_s.C_t) e^(cum_t-cum_s) dy_t; dx, dz, dD; M_ts =
                                  (C_t.B_s) e^.. dt'_s (dy_t.x_s) formed once in fp32: its
                                  column sums here, its row sums stored per source tile
  cdfin (chunk, head, row)        d cum_t = dy_t.yi_t + rowsum_t - colsum_t - u_t, with u_s =
                                  dt'_s x_s . G_state_s; d a_s = sigma + sum u + reverse cumsum;
                                  ddt, dA, d dt_bias
  cdbc  (chunk tile, group, row)  dC_t = sum_h e^cum_t dy_t S_c + sum_{s<=t} V_ts B_s,
                                  dB_s = sum_h e^(tot-cum_s) dt'_s x_s dS_c + sum_{t>=s} V_ts C_t,
                                  V = sum_h (dy x^T) * decay * dt'_s
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _ccum(dt_ptr, A_ptr, dtb_ptr, dtp_ptr, cum_ptr, L, H, dt_lo, dt_hi, Q: tl.constexpr,
          SOFTPLUS: tl.constexpr):
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs = c * Q + tl.arange(0, Q)
    m = offs < L
    v = tl.load(dt_ptr + (b * L + offs) * H + h, mask=m, other=0.0).to(tl.float32)
    v += tl.load(dtb_ptr + h)
    if SOFTPLUS:
        v = tl.where(v <= 20.0, tl.log(1.0 + tl.exp(v)), v)
    dtp = tl.where(m, tl.minimum(tl.maximum(v, dt_lo), dt_hi), 0.0)
    cum = tl.cumsum(dtp * tl.load(A_ptr + h), 0)
    o = (b * H + h) * L + offs
    tl.store(dtp_ptr + o, dtp, mask=m)
    tl.store(cum_ptr + o, cum, mask=m)


@triton.jit
def _ccb(B_ptr, C_ptr, cb_ptr, L, G, nc, N: tl.constexpr, T: tl.constexpr, NT: tl.constexpr):
    """C B^T of every tile pair of a chunk, per group: fp32 (b, nc, G, Q, Q), shared by the
    group's heads in cout, cdx and cdbc (cbbuf) instead of one product per head."""
    pid = tl.program_id(0)
    c = pid // (NT * NT)
    i = pid // NT % NT
    j = pid % NT
    g = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    offs_n = tl.arange(0, N)
    oi = c * Q + i * T + ar
    oj = c * Q + j * T + ar
    Ci = tl.load(C_ptr + ((b * L + oi[:, None]) * G + g) * N + offs_n[None, :],
                 mask=(oi < L)[:, None], other=0.0)
    Bj = tl.load(B_ptr + ((b * L + oj[:, None]) * G + g) * N + offs_n[None, :],
                 mask=(oj < L)[:, None], other=0.0)
    base = ((b * nc + c) * G + g) * Q * Q
    tl.store(cb_ptr + base + (i * T + ar[:, None]) * Q + j * T + ar[None, :],
             tl.dot(Ci, tl.trans(Bj)))


@triton.jit
def _cb_tile(cb_ptr, b, c, g, G, nc, i, j, T: tl.constexpr, NT: tl.constexpr):
    """[T, T] tile (t-tile i, s-tile j) of the chunk's C B^T."""
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    return tl.load(cb_ptr + ((b * nc + c) * G + g) * Q * Q + (i * T + ar[:, None]) * Q + j * T
                   + ar[None, :])


@triton.jit
def _cst(x_ptr, B_ptr, dtp_ptr, cum_ptr, st_ptr, final_ptr, hsp_ptr, psp_ptr, L, H, P, G, nc,
         nseg, spc, nl, seg_off, N: tl.constexpr, T: tl.constexpr, NT: tl.constexpr,
         BP: tl.constexpr, PRE: tl.constexpr):
    """Sequence splits: program (channel block, segment) walks chunks [seg spc, seg spc + spc);
    PRE (the pre-pass): from zero, storing only the segment's end state and decay (hsp, psp);
    else from the earlier segments' pre-pass results folded in."""
    pp = tl.program_id(0) // nl
    seg = tl.program_id(0) % nl + seg_off
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // (H // G)
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    offs_p = pp * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, N)
    st_off = offs_p[:, None] * N + offs_n[None, :]
    bh = b * H + h
    S = tl.zeros([BP, N], dtype=tl.float32)
    logd = 0.0
    if not PRE:
        for j in range(0, seg):
            S = tl.load(psp_ptr + bh * nseg + j) * S + tl.load(
                hsp_ptr + (bh * nseg + j) * P * N + st_off)
    for c in range(seg * spc, tl.minimum(nc, seg * spc + spc)):
        if not PRE:
            tl.store(st_ptr + (bh * nc + c) * P * N + st_off, S.to(st_ptr.dtype.element_ty))
        tot = tl.load(cum_ptr + bh * L + tl.minimum(c * Q + Q, L) - 1)
        logd += tot
        S = tl.exp(tot) * S
        for i in range(0, NT):
            offs = c * Q + i * T + ar
            m = offs < L
            cum = tl.load(cum_ptr + bh * L + offs, mask=m, other=0.0)
            dtp = tl.load(dtp_ptr + bh * L + offs, mask=m, other=0.0)
            w = tl.where(m, dtp * tl.exp(tot - cum), 0.0)
            xt = tl.load(x_ptr + ((b * L + offs[:, None]) * H + h) * P + offs_p[None, :],
                         mask=m[:, None], other=0.0)
            Bt = tl.load(B_ptr + ((b * L + offs[:, None]) * G + g) * N + offs_n[None, :],
                         mask=m[:, None], other=0.0)
            S = tl.dot(tl.trans((xt * w[:, None]).to(Bt.dtype)), Bt, S)
    if PRE:
        tl.store(hsp_ptr + (bh * nseg + seg) * P * N + st_off, S)
        tl.store(psp_ptr + bh * nseg + seg, tl.exp(logd))
    else:
        tl.store(final_ptr + bh * P * N + st_off,
                 S, mask=(st_off >= 0) & (seg == nseg - 1))


@triton.jit
def _cout(x_ptr, z_ptr, B_ptr, C_ptr, D_ptr, dtp_ptr, cum_ptr, st_ptr, out_ptr, yp_ptr, cb_ptr,
          L, H, G, nc, P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, NT: tl.constexpr,
          CBBUF: tl.constexpr):
    pid = tl.program_id(0)
    c = pid // NT
    i = pid % NT
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // (H // G)
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    offs_p = tl.arange(0, P)
    offs_n = tl.arange(0, N)
    bh = b * H + h
    ot = c * Q + i * T + ar
    mt = ot < L
    cum_t = tl.load(cum_ptr + bh * L + ot, mask=mt, other=0.0)
    Ct = tl.load(C_ptr + ((b * L + ot[:, None]) * G + g) * N + offs_n[None, :], mask=mt[:, None],
                 other=0.0)
    Sc = tl.load(st_ptr + (bh * nc + c) * P * N + offs_p[:, None] * N + offs_n[None, :])
    acc = tl.dot(Ct, tl.trans(Sc)) * tl.exp(cum_t)[:, None]
    for j in range(0, i + 1):
        os_ = c * Q + j * T + ar
        ms = os_ < L
        cum_s = tl.load(cum_ptr + bh * L + os_, mask=ms, other=0.0)
        dtp_s = tl.load(dtp_ptr + bh * L + os_, mask=ms, other=0.0)
        xs = tl.load(x_ptr + ((b * L + os_[:, None]) * H + h) * P + offs_p[None, :],
                     mask=ms[:, None], other=0.0)
        keep = ((j < i) | (ar[:, None] >= ar[None, :])) & mt[:, None]
        if CBBUF:
            CB = _cb_tile(cb_ptr, b, c, g, G, nc, i, j, T, NT)
        else:
            Bs = tl.load(B_ptr + ((b * L + os_[:, None]) * G + g) * N + offs_n[None, :],
                         mask=ms[:, None], other=0.0)
            CB = tl.dot(Ct, tl.trans(Bs))
        W = CB * tl.where(keep, tl.exp(cum_t[:, None] - cum_s[None, :]), 0.0)
        acc = tl.dot((W * dtp_s[None, :]).to(xs.dtype), xs, acc)
    io = ((b * L + ot[:, None]) * H + h) * P + offs_p[None, :]
    xt = tl.load(x_ptr + io, mask=mt[:, None], other=0.0).to(tl.float32)
    y = acc + tl.load(D_ptr + h) * xt
    tl.store(yp_ptr + io, y.to(yp_ptr.dtype.element_ty), mask=mt[:, None])
    zt = tl.load(z_ptr + io, mask=mt[:, None], other=0.0).to(tl.float32)
    tl.store(out_ptr + io, (y * zt * tl.sigmoid(zt)).to(out_ptr.dtype.element_ty),
             mask=mt[:, None])


@triton.jit
def _cdst(dout_ptr, z_ptr, C_ptr, dtp_ptr, cum_ptr, st_ptr, dst_ptr, sig_ptr, dy_ptr, hsp_ptr,
          psp_ptr, L, H, P, G, nc, nseg, spc, nl, seg_off, N: tl.constexpr, T: tl.constexpr,
          NT: tl.constexpr, BP: tl.constexpr, DYBUF: tl.constexpr, PRE: tl.constexpr):
    """Sequence splits as in _cst, walked from each segment's end."""
    pp = tl.program_id(0) // nl
    seg = tl.program_id(0) % nl + seg_off
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // (H // G)
    npb = P // BP
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    offs_p = pp * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, N)
    st_off = offs_p[:, None] * N + offs_n[None, :]
    bh = b * H + h
    dS = tl.zeros([BP, N], dtype=tl.float32)
    logd = 0.0
    if not PRE:
        for jj in range(0, nseg - 1 - seg):
            j = nseg - 1 - jj
            dS = tl.load(psp_ptr + bh * nseg + j) * dS + tl.load(
                hsp_ptr + (bh * nseg + j) * P * N + st_off)
    c_end = tl.minimum(nc, seg * spc + spc)
    for cc in range(0, c_end - seg * spc):
        c = c_end - 1 - cc
        ck = (bh * nc + c) * P * N + st_off
        tot = tl.load(cum_ptr + bh * L + tl.minimum(c * Q + Q, L) - 1)
        logd += tot
        if not PRE:
            tl.store(dst_ptr + ck, dS.to(dst_ptr.dtype.element_ty))
            Sc = tl.load(st_ptr + ck).to(tl.float32)
            tl.store(sig_ptr + (bh * nc + c) * npb + pp,
                     tl.exp(tot) * tl.sum(tl.sum(Sc * dS, 1), 0))
        dS = tl.exp(tot) * dS
        for i in range(0, NT):
            offs = c * Q + i * T + ar
            m = offs < L
            cum = tl.load(cum_ptr + bh * L + offs, mask=m, other=0.0)
            io = ((b * L + offs[:, None]) * H + h) * P + offs_p[None, :]
            do = tl.load(dout_ptr + io, mask=m[:, None], other=0.0).to(tl.float32)
            zt = tl.load(z_ptr + io, mask=m[:, None], other=0.0).to(tl.float32)
            dy = do * zt * tl.sigmoid(zt)
            if DYBUF and not PRE:  # for cdx and cdbc: one tile to read instead of dout and z
                tl.store(dy_ptr + io, dy.to(dy_ptr.dtype.element_ty), mask=m[:, None])
            dy = dy * tl.exp(cum)[:, None]
            Ct = tl.load(C_ptr + ((b * L + offs[:, None]) * G + g) * N + offs_n[None, :],
                         mask=m[:, None], other=0.0)
            dS = tl.dot(tl.trans(dy.to(Ct.dtype)), Ct, dS)
    if PRE:
        tl.store(hsp_ptr + (bh * nseg + seg) * P * N + st_off, dS)
        tl.store(psp_ptr + bh * nseg + seg, tl.exp(logd))


@triton.jit
def _dy(dout_ptr, z_ptr, io, m):
    do = tl.load(dout_ptr + io, mask=m[:, None], other=0.0).to(tl.float32)
    zt = tl.load(z_ptr + io, mask=m[:, None], other=0.0).to(tl.float32)
    return do * zt * tl.sigmoid(zt)


@triton.jit
def _cdx(x_ptr, z_ptr, B_ptr, C_ptr, D_ptr, dtp_ptr, cum_ptr, st_ptr, dst_ptr, dout_ptr, yp_ptr,
         dx_ptr, dz_ptr, v_ptr, u_ptr, gx_ptr, rp_ptr, dD_ptr, dy_ptr, cb_ptr, L, H, G, nc,
         P: tl.constexpr, N: tl.constexpr, T: tl.constexpr, NT: tl.constexpr,
         DYBUF: tl.constexpr, MSUM: tl.constexpr, CBBUF: tl.constexpr):
    pid = tl.program_id(0)
    c = pid // NT
    j = pid % NT
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // (H // G)
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    offs_p = tl.arange(0, P)
    offs_n = tl.arange(0, N)
    bh = b * H + h
    os_ = c * Q + j * T + ar
    ms = os_ < L
    cum_s = tl.load(cum_ptr + bh * L + os_, mask=ms, other=0.0)
    dtp_s = tl.load(dtp_ptr + bh * L + os_, mask=ms, other=0.0)
    tot = tl.load(cum_ptr + bh * L + tl.minimum(c * Q + Q, L) - 1)
    bc = ((b * L + os_[:, None]) * G + g) * N + offs_n[None, :]
    Bs = tl.load(B_ptr + bc, mask=ms[:, None], other=0.0)
    Cs = tl.load(C_ptr + bc, mask=ms[:, None], other=0.0)
    io = ((b * L + os_[:, None]) * H + h) * P + offs_p[None, :]
    xs = tl.load(x_ptr + io, mask=ms[:, None], other=0.0)
    # this tile's own rows first (dz, dD, the entering state's part of d cum), so that only
    # x, B and the accumulators stay live through the loop
    do = tl.load(dout_ptr + io, mask=ms[:, None], other=0.0).to(tl.float32)
    zt = tl.load(z_ptr + io, mask=ms[:, None], other=0.0).to(tl.float32)
    sz = tl.sigmoid(zt)
    yp = tl.load(yp_ptr + io, mask=ms[:, None], other=0.0).to(tl.float32)
    tl.store(dz_ptr + io, (do * yp * sz * (1.0 + zt * (1.0 - sz))).to(dz_ptr.dtype.element_ty),
             mask=ms[:, None])
    dy_s = do * zt * sz
    tl.store(dD_ptr + bh * nc * NT + pid, tl.sum(tl.sum(dy_s * xs.to(tl.float32), 1), 0))
    ck = (bh * nc + c) * P * N + offs_p[:, None] * N + offs_n[None, :]
    g1 = tl.sum(dy_s * tl.dot(Cs, tl.trans(tl.load(st_ptr + ck))), 1) * tl.exp(cum_s)
    Gs = tl.dot(Bs, tl.trans(tl.load(dst_ptr + ck))) * tl.where(ms, tl.exp(tot - cum_s), 0.0)[:, None]
    u = dtp_s * tl.sum(xs.to(tl.float32) * Gs, 1)
    colsum = tl.zeros([T], dtype=tl.float32)
    for i in range(j, NT):
        ot = c * Q + i * T + ar
        mt = ot < L
        cum_t = tl.load(cum_ptr + bh * L + ot, mask=mt, other=0.0)
        iot = ((b * L + ot[:, None]) * H + h) * P + offs_p[None, :]
        if DYBUF:
            dy = tl.load(dy_ptr + iot, mask=mt[:, None], other=0.0)
        else:
            dy = _dy(dout_ptr, z_ptr, iot, mt).to(xs.dtype)
        keep = ((i > j) | (ar[None, :] >= ar[:, None])) & mt[None, :]  # [s, t]: t >= s
        if CBBUF:
            BC = tl.trans(_cb_tile(cb_ptr, b, c, g, G, nc, i, j, T, NT))
        else:
            Ct = tl.load(C_ptr + ((b * L + ot[:, None]) * G + g) * N + offs_n[None, :],
                         mask=mt[:, None], other=0.0)
            BC = tl.dot(Bs, tl.trans(Ct))
        W = BC * tl.where(keep, tl.exp(cum_t[None, :] - cum_s[:, None]), 0.0)
        Gs = tl.dot(W.to(xs.dtype), dy, Gs)
        if MSUM:  # else cdbc forms M (it has dy x^T per head already)
            M = tl.dot(xs, tl.trans(dy)) * W * dtp_s[:, None]
            colsum += tl.sum(M, 1)
            tl.store(rp_ptr + (bh * NT + j) * L + ot, tl.sum(M, 0), mask=mt)
    gx = tl.sum(xs.to(tl.float32) * Gs, 1)
    dy_s = _dy(dout_ptr, z_ptr, io, ms)  # again: not held through the loop
    tl.store(dx_ptr + io, (dtp_s[:, None] * Gs + tl.load(D_ptr + h) * dy_s).to(
        dx_ptr.dtype.element_ty), mask=ms[:, None])
    o = bh * L + os_
    tl.store(v_ptr + o, g1 - colsum - u, mask=ms)
    tl.store(u_ptr + o, u, mask=ms)
    tl.store(gx_ptr + o, gx, mask=ms)


@triton.jit
def _cdfin(dt_ptr, A_ptr, dtb_ptr, dtp_ptr, v_ptr, u_ptr, gx_ptr, rp_ptr, cp_ptr, sig_ptr,
           ddt_ptr, dA_ptr, ddtb_ptr, L, H, nc, npb, dt_lo, dt_hi, T: tl.constexpr,
           NT: tl.constexpr, SOFTPLUS: tl.constexpr, CSUM: tl.constexpr):
    c = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    Q: tl.constexpr = T * NT
    bh = b * H + h
    offs = c * Q + tl.arange(0, Q)
    m = offs < L
    o = bh * L + offs
    tile = tl.arange(0, Q) // T
    r = tl.zeros([Q], dtype=tl.float32)
    for j in range(0, NT):
        r += tl.load(rp_ptr + (bh * NT + j) * L + offs, mask=m & (tile >= j), other=0.0)
        if CSUM:  # M's column sums, stored per t-tile slot by cdbc
            r -= tl.load(cp_ptr + (bh * NT + j) * L + offs, mask=m & (tile <= j), other=0.0)
    sig = tl.zeros([Q], dtype=tl.float32)
    for k in range(0, npb):
        sig += tl.load(sig_ptr + (bh * nc + c) * npb + k)
    u = tl.load(u_ptr + o, mask=m, other=0.0)
    dcum = tl.load(v_ptr + o, mask=m, other=0.0) + r
    # d a_s = sum_{k >= s} d cum_k, with d tot = sigma + sum u at the last step
    da = sig + tl.sum(u, 0) + tl.sum(dcum, 0) - tl.cumsum(dcum, 0) + dcum
    A = tl.load(A_ptr + h)
    v = tl.load(dt_ptr + (b * L + offs) * H + h, mask=m, other=0.0).to(tl.float32)
    v += tl.load(dtb_ptr + h)
    if SOFTPLUS:
        dsp = tl.where(v <= 20.0, tl.sigmoid(v), 1.0)
        v = tl.where(v <= 20.0, tl.log(1.0 + tl.exp(v)), v)
    else:
        dsp = tl.full([Q], 1.0, tl.float32)
    keep = (v >= dt_lo) & (v <= dt_hi) & m
    dtp = tl.load(dtp_ptr + o, mask=m, other=0.0)
    ddt = tl.where(keep, dsp, 0.0) * (tl.load(gx_ptr + o, mask=m, other=0.0) + A * da)
    tl.store(ddt_ptr + (b * L + offs) * H + h, ddt.to(ddt_ptr.dtype.element_ty), mask=m)
    tl.store(dA_ptr + bh * nc + c, tl.sum(tl.where(m, dtp * da, 0.0), 0))
    tl.store(ddtb_ptr + bh * nc + c, tl.sum(ddt, 0))


@triton.jit
def _dy_tile(dy_ptr, dout_ptr, z_ptr, io, m, DYBUF: tl.constexpr):
    if DYBUF:
        return tl.load(dy_ptr + io, mask=m[:, None], other=0.0).to(tl.float32)
    else:
        return _dy(dout_ptr, z_ptr, io, m)


@triton.jit
def _cdbc(x_ptr, z_ptr, B_ptr, C_ptr, dtp_ptr, cum_ptr, st_ptr, dst_ptr, dout_ptr, dy_ptr, dB_ptr,
          dC_ptr, rp_ptr, cp_ptr, cb_ptr, L, H, G, nc, P: tl.constexpr, N: tl.constexpr,
          T: tl.constexpr, NT: tl.constexpr, HS: tl.constexpr, DYBUF: tl.constexpr,
          MSUM: tl.constexpr, CBBUF: tl.constexpr):
    """HS programs per group, each over hpg / HS heads (fp32 partials when HS > 1). MSUM: also
    M = V_h * (C B^T) per head of the pairs (i, j <= i), its row sums to slot j of rp and its
    column sums to slot i of cp."""
    pid = tl.program_id(0)
    c = pid // NT
    i = pid % NT
    g = tl.program_id(1) // HS
    hs = tl.program_id(1) % HS
    b = tl.program_id(2).to(tl.int64)
    hpp = (H // G) // HS
    h0 = g * (H // G) + hs * hpp
    Q: tl.constexpr = T * NT
    ar = tl.arange(0, T)
    offs_p = tl.arange(0, P)
    offs_n = tl.arange(0, N)
    oi = c * Q + i * T + ar
    mi = oi < L
    tail = tl.minimum(c * Q + Q, L) - 1
    causal = ar[:, None] >= ar[None, :]
    bci = ((b * L + oi[:, None]) * G + g) * N + offs_n[None, :]
    Bi = tl.load(B_ptr + bci, mask=mi[:, None], other=0.0)
    Ci = tl.load(C_ptr + bci, mask=mi[:, None], other=0.0)
    if MSUM:
        if CBBUF:
            CB = _cb_tile(cb_ptr, b, c, g, G, nc, i, i, T, NT)
        else:
            CB = tl.dot(Ci, tl.trans(Bi))
    dC = tl.zeros([T, N], dtype=tl.float32)
    dB = tl.zeros([T, N], dtype=tl.float32)
    # the states' parts and the diagonal pair V_ii, over the heads
    V = tl.zeros([T, T], dtype=tl.float32)
    for hh in range(0, hpp):
        h = h0 + hh
        bh = b * H + h
        cum = tl.load(cum_ptr + bh * L + oi, mask=mi, other=0.0)
        dtp = tl.load(dtp_ptr + bh * L + oi, mask=mi, other=0.0)
        tot = tl.load(cum_ptr + bh * L + tail)
        io = ((b * L + oi[:, None]) * H + h) * P + offs_p[None, :]
        xi = tl.load(x_ptr + io, mask=mi[:, None], other=0.0)
        dy = _dy_tile(dy_ptr, dout_ptr, z_ptr, io, mi, DYBUF)
        ck = (bh * nc + c) * P * N + offs_p[:, None] * N + offs_n[None, :]
        dC = tl.dot((dy * tl.exp(cum)[:, None]).to(xi.dtype), tl.load(st_ptr + ck), dC)
        w = tl.where(mi, dtp * tl.exp(tot - cum), 0.0)
        dB = tl.dot((xi.to(tl.float32) * w[:, None]).to(xi.dtype), tl.load(dst_ptr + ck), dB)
        dec = tl.where(causal & mi[:, None], tl.exp(cum[:, None] - cum[None, :]), 0.0) * dtp[None, :]
        Vh = tl.dot(dy.to(xi.dtype), tl.trans(xi)) * dec
        V += Vh
        if MSUM:
            M = Vh * CB
            tl.store(rp_ptr + (bh * NT + i) * L + oi, tl.sum(M, 1), mask=mi)
            tl.store(cp_ptr + (bh * NT + i) * L + oi, tl.sum(M, 0), mask=mi)
    dC = tl.dot(V.to(Bi.dtype), Bi, dC)
    dB = tl.dot(tl.trans(V.to(Ci.dtype)), Ci, dB)
    # V_ij, j < i: dC_i += V_ij B_j
    for j in range(0, i):
        oj = c * Q + j * T + ar
        mj = oj < L
        Bj = tl.load(B_ptr + ((b * L + oj[:, None]) * G + g) * N + offs_n[None, :],
                     mask=mj[:, None], other=0.0)
        if MSUM:
            if CBBUF:
                CB = _cb_tile(cb_ptr, b, c, g, G, nc, i, j, T, NT)
            else:
                CB = tl.dot(Ci, tl.trans(Bj))
        V = tl.zeros([T, T], dtype=tl.float32)
        for hh in range(0, hpp):
            h = h0 + hh
            bh = b * H + h
            cum_i = tl.load(cum_ptr + bh * L + oi, mask=mi, other=0.0)
            cum_j = tl.load(cum_ptr + bh * L + oj, mask=mj, other=0.0)
            dtp_j = tl.load(dtp_ptr + bh * L + oj, mask=mj, other=0.0)
            dy = _dy_tile(dy_ptr, dout_ptr, z_ptr, ((b * L + oi[:, None]) * H + h) * P +
                          offs_p[None, :], mi, DYBUF)
            xj = tl.load(x_ptr + ((b * L + oj[:, None]) * H + h) * P + offs_p[None, :],
                         mask=mj[:, None], other=0.0)
            Vh = tl.dot(dy.to(xj.dtype), tl.trans(xj)) * (
                tl.where(mi[:, None], tl.exp(cum_i[:, None] - cum_j[None, :]), 0.0) * dtp_j[None, :])
            V += Vh
            if MSUM:
                M = Vh * CB
                tl.store(rp_ptr + (bh * NT + j) * L + oi, tl.sum(M, 1), mask=mi)
                tl.store(cp_ptr + (bh * NT + i) * L + oj, tl.sum(M, 0), mask=mj)
        dC = tl.dot(V.to(Bj.dtype), Bj, dC)
    # V_ki, k > i: dB_i += V_ki^T C_k
    for k in range(i + 1, NT):
        ok = c * Q + k * T + ar
        mk = ok < L
        V = tl.zeros([T, T], dtype=tl.float32)
        for hh in range(0, hpp):
            h = h0 + hh
            bh = b * H + h
            cum_i = tl.load(cum_ptr + bh * L + oi, mask=mi, other=0.0)
            cum_k = tl.load(cum_ptr + bh * L + ok, mask=mk, other=0.0)
            dtp_i = tl.load(dtp_ptr + bh * L + oi, mask=mi, other=0.0)
            dy = _dy_tile(dy_ptr, dout_ptr, z_ptr, ((b * L + ok[:, None]) * H + h) * P +
                          offs_p[None, :], mk, DYBUF)
            xi = tl.load(x_ptr + ((b * L + oi[:, None]) * H + h) * P + offs_p[None, :],
                         mask=mi[:, None], other=0.0)
            V += tl.dot(dy.to(xi.dtype), tl.trans(xi)) * (
                tl.where(mk[:, None], tl.exp(cum_k[:, None] - cum_i[None, :]), 0.0) * dtp_i[None, :])
        Ck = tl.load(C_ptr + ((b * L + ok[:, None]) * G + g) * N + offs_n[None, :],
                     mask=mk[:, None], other=0.0)
        dB = tl.dot(tl.trans(V.to(Ck.dtype)), Ck, dB)
    part = hs * (tl.num_programs(2) * L * G * N)
    tl.store(dB_ptr + part + bci, dB.to(dB_ptr.dtype.element_ty), mask=mi[:, None])
    tl.store(dC_ptr + part + bci, dC.to(dC_ptr.dtype.element_ty), mask=mi[:, None])


DEFAULT = dict(T=64, NT=4, cst_bp=64, cst_warps=4, cst_stages=2, cout_warps=4, cout_stages=2,
               cdst_bp=64, cdst_warps=4, cdst_stages=2, cdx_warps=4, cdx_stages=2,
               cdbc_warps=4, cdbc_stages=2, cdbc_hs=1, dybuf=False, msum="cdx",
               splits=1, cbbuf=False)


class Chunk:
    """One forward (+ backward) in chunk form. x (b, L, H, P), dt (b, L, H), A (H,), B, C
    (b, L, G, N), D (H,), z like x, dt_bias (H,); softplus on dt + dt_bias."""

    def __init__(self, cfg=None, softplus=True, dt_limit=(0.0, float("inf"))):
        self.cfg = dict(DEFAULT, **(cfg or {}))
        self.softplus = softplus
        self.lo, self.hi = dt_limit
        self.record = None  # a list: every launch appended as (name, fn) for timing alone

    def _go(self, name, kern, grid, *args, **meta):
        kern[grid](*args, **meta)
        if self.record is not None:
            self.record.append((name, lambda: kern[grid](*args, **meta)))

    def _segments(self, b, H, P, N, nc):
        """(segments, chunks per segment, their end states and decays) for cfg["splits"]."""
        spc = triton.cdiv(nc, max(1, min(self.cfg["splits"], nc)))
        nseg = triton.cdiv(nc, spc)
        hsp = torch.empty(b, H, nseg, P, N, device=self.dev, dtype=torch.float32)
        psp = torch.empty(b, H, nseg, device=self.dev, dtype=torch.float32)
        return nseg, spc, hsp, psp

    def forward(self, x, dt, A, B, C, D, z, dt_bias):
        self.dev = x.device
        k = self.cfg
        b, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        T, NT = k["T"], k["NT"]
        Q = T * NT
        nc = triton.cdiv(L, Q)
        dev, f32 = x.device, torch.float32
        dtp = torch.empty(b, H, L, device=dev, dtype=f32)
        cum = torch.empty_like(dtp)
        self._go("ccum", _ccum, (nc, H, b), dt, A, dt_bias, dtp, cum, L, H, self.lo, self.hi, Q=Q,
                          SOFTPLUS=self.softplus)
        cb = x
        if k["cbbuf"]:
            cb = torch.empty(b, nc, G, Q, Q, device=dev, dtype=f32)
            self._go("ccb", _ccb, (nc * NT * NT, G, b), B, C, cb, L, G, nc, N=N, T=T, NT=NT,
                     num_warps=4)
        st = torch.empty(b, H, nc, P, N, device=dev, dtype=x.dtype)
        final = torch.empty(b, H, P, N, device=dev, dtype=f32)
        npb = P // k["cst_bp"]
        nseg, spc, hsp, psp = self._segments(b, H, P, N, nc)
        if nseg > 1:
            self._go("cst_pre", _cst, (npb * (nseg - 1), H, b), x, B, dtp, cum, x, x, hsp, psp, L,
                     H, P, G, nc, nseg, spc, nseg - 1, 0, N=N, T=T, NT=NT, BP=k["cst_bp"],
                     PRE=True, num_warps=k["cst_warps"], num_stages=k["cst_stages"])
        self._go("cst", _cst, (npb * nseg, H, b), x, B, dtp, cum, st, final, hsp, psp, L, H, P, G, nc,
                 nseg, spc, nseg, 0, N=N, T=T, NT=NT, PRE=False, BP=k["cst_bp"], num_warps=k["cst_warps"],
                                       num_stages=k["cst_stages"])
        out = torch.empty_like(x)
        yp = torch.empty_like(x)
        self._go("cout", _cout, (nc * NT, H, b), x, z, B, C, D, dtp, cum, st, out, yp, cb, L, H, G, nc, P=P, N=N, T=T, CBBUF=k["cbbuf"],
                               NT=NT, num_warps=k["cout_warps"], num_stages=k["cout_stages"])
        self.saved = (x, dt, A, B, C, D, z, dt_bias, dtp, cum, st, yp, cb)
        return out, final

    def backward(self, dout):
        k = self.cfg
        x, dt, A, B, C, D, z, dt_bias, dtp, cum, st, yp, cb = self.saved
        cbbuf = k["cbbuf"]
        b, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        T, NT, HS = k["T"], k["NT"], k["cdbc_hs"]
        dybuf, msum_dbc = k["dybuf"], k["msum"] == "dbc"
        nc = st.shape[2]
        dev, f32 = x.device, torch.float32
        npb = P // k["cdst_bp"]
        dst = torch.empty_like(st)
        sig = torch.empty(b, H, nc, npb, device=dev, dtype=f32)
        dy = torch.empty_like(x) if dybuf else x
        nseg, spc, hsp, psp = self._segments(b, H, P, N, nc)
        if nseg > 1:
            self._go("cdst_pre", _cdst, (npb * (nseg - 1), H, b), dout, z, C, dtp, cum, st, dst,
                     sig, dy, hsp, psp, L, H, P, G, nc, nseg, spc, nseg - 1, 1, N=N, T=T, NT=NT,
                     BP=k["cdst_bp"], DYBUF=dybuf, PRE=True, num_warps=k["cdst_warps"],
                     num_stages=k["cdst_stages"])
        self._go("cdst", _cdst, (npb * nseg, H, b), dout, z, C, dtp, cum, st, dst, sig, dy, hsp,
                 psp, L, H, P, G, nc, nseg, spc, nseg, 0, N=N, T=T, NT=NT, BP=k["cdst_bp"],
                 DYBUF=dybuf, PRE=False, num_warps=k["cdst_warps"], num_stages=k["cdst_stages"])
        dx, dz = torch.empty_like(x), torch.empty_like(x)
        v, u, gx = (torch.empty(b, H, L, device=dev, dtype=f32) for _ in range(3))
        rp = torch.empty(b, H, NT, L, device=dev, dtype=f32)
        cp = torch.empty(b, H, NT, L, device=dev, dtype=f32) if msum_dbc else rp
        dDp = torch.empty(b, H, nc * NT, device=dev, dtype=f32)
        self._go("cdx", _cdx, (nc * NT, H, b), x, z, B, C, D, dtp, cum, st, dst, dout, yp, dx, dz,
                 v, u, gx, rp, dDp, dy, cb, L, H, G, nc, P=P, N=N, T=T, NT=NT, DYBUF=dybuf,
                 CBBUF=cbbuf,
                 MSUM=not msum_dbc, num_warps=k["cdx_warps"], num_stages=k["cdx_stages"])
        if HS == 1:
            dB, dC = torch.empty_like(B), torch.empty_like(C)
        else:
            dB, dC = (torch.empty(HS, *B.shape, device=dev, dtype=f32) for _ in range(2))
        self._go("cdbc", _cdbc, (nc * NT, G * HS, b), x, z, B, C, dtp, cum, st, dst, dout, dy, dB,
                 dC, rp, cp, cb, L, H, G, nc, P=P, N=N, T=T, NT=NT, HS=HS, DYBUF=dybuf,
                 CBBUF=cbbuf,
                 MSUM=msum_dbc, num_warps=k["cdbc_warps"], num_stages=k["cdbc_stages"])
        if HS > 1:
            dB, dC = dB.sum(0).to(B.dtype), dC.sum(0).to(C.dtype)
        ddt = torch.empty_like(dt)
        dAp = torch.empty(b, H, nc, device=dev, dtype=f32)
        ddtbp = torch.empty_like(dAp)
        self._go("cdfin", _cdfin, (nc, H, b), dt, A, dt_bias, dtp, v, u, gx, rp, cp, sig, ddt, dAp,
                 ddtbp, L, H, nc, npb, self.lo, self.hi, T=T, NT=NT, SOFTPLUS=self.softplus,
                 CSUM=msum_dbc, num_warps=4)
        return dict(x=dx, dt=ddt, A=dAp.sum((0, 2)), B=dB, C=dC, D=dDp.sum((0, 2)), z=dz,
                    dt_bias=ddtbp.sum((0, 2)))
