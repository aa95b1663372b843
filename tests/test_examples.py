"""examples/: a few training steps on CPU lower the loss, write the curve, and generate decodes."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_lm_lowers_the_loss_and_generate_decodes(tmp_path):
    train = load("train_lm")
    res = train.main(["--steps", "24", "--scan", "reference", "--device", "cpu", "--d-model", "32",
                      "--n-layer", "1", "--seq-len", "64", "--batch", "8", "--eval-every", "8",
                      "--max-bytes", "300000", "--out", str(tmp_path)])
    log = res["runs"][0]
    first, last = sum(log["loss"][:4]) / 4, sum(log["loss"][-4:]) / 4
    assert last < first - 0.2, (first, last)
    assert log["eval_loss"][-1] < log["eval_loss"][0]
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    text = load("generate").main([str(tmp_path / "model.pt"), "--prompt", "def ", "--n", "40",
                                  "--device", "cpu"])
    assert text.startswith("def ") and len(text.encode("utf-8", "replace")) >= 4
