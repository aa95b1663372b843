"""ssmgen bench's floor arithmetic against ANCHORS.md, and its report on fake timings."""
import pytest

from ssmgen import bench, suite

# ../shared/bench/ANCHORS.md: copy 3.02 TB/s, exp2 4.14 T/s, and its floors (ms) per shape:
# byte fwd / fwd+bwd, exp fwd / fwd+bwd
ANCHORS = {
    "m1_130m_bf16": (0.067, 0.184, 0.097, 0.195),
    "m1_1.4b_bf16": (0.178, 0.490, 0.259, 0.519),
    "m1_long_bf16": (0.356, 0.981, 0.519, 1.037),
    "m1_n64_bf16": (0.090, 0.249, 0.519, 1.037),
    "m1_n128_bf16": (0.046, 0.126, 0.519, 1.037),
    "m1_fp32": (0.179, 0.491, 0.130, 0.259),
}


@pytest.mark.parametrize("name", sorted(ANCHORS))
def test_floor_matches_anchors(name):
    s = next(x for x in suite.scan_shapes() if x["name"] == name)
    f = bench.floor_ms(s, 3.02e12, 4.14e12)
    got = (f["bytes_fwd_ms"], f["bytes_fwdbwd_ms"], f["exp_fwd_ms"], f["exp_fwdbwd_ms"])
    for g, want in zip(got, ANCHORS[name]):
        assert abs(g - want) <= 0.006 * want + 0.0015, (name, got, ANCHORS[name])
    assert f["fwd_ms"] == max(got[0], got[2]) and f["fwdbwd_ms"] == max(got[1], got[3])


def test_report_table_and_plot(tmp_path):
    rows = []
    for s in suite.scan_shapes()[:2]:
        rows.append({"name": s["name"], "triton_fwd_ms": 1.0, "triton_fwdbwd_ms": 4.0,
                     "triton_peak_mb": 10.0, "cuda_fwd_ms": 0.5, "cuda_fwdbwd_ms": 3.0,
                     "cuda_peak_mb": 9.0, "peer_fwd_ms": 2.0, "peer_fwdbwd_ms": 6.0,
                     "peer_peak_mb": 20.0, "floor": bench.floor_ms(s, 3e12, 4e12)})
    meta = {"device": {"name": "FakeGPU"}, "copy_TBps": 3.0, "exp2_Tps": 4.0, "date": "today"}
    text = bench.table(meta, rows)
    assert "| m1_130m_bf16 | triton | 1.000 |" in text and "| 2.00 |" in text
    assert "| m1_130m_bf16 | cuda | 0.500 |" in text and "| 4.00 |" in text
    assert "| m1_130m_bf16 | peer | 2.000 |" in text
    bench.plot(rows, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_report_of_step_shapes_alone(tmp_path):
    """`ssmgen bench --shapes step_...` has step rows and no scan rows: a table, no plot."""
    meta = {"device": {"name": "FakeGPU"}, "copy_TBps": 3.0, "exp2_Tps": 4.0, "date": "today"}
    step = [{"name": "step_b64_d4096_n16", "kind": "step", "triton_eager_ms": 0.02,
             "triton_graph_ms": 0.008, "floor_ms": 0.012}]
    text = bench.report(meta, [], step, str(tmp_path))
    assert "| step_b64_d4096_n16 | triton | 0.0200 | 0.0080 | 0.0120 |" in text
    assert (tmp_path / "results.md").read_text().strip() == text.strip()
    assert not (tmp_path / "results.png").exists()
