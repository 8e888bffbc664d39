"""The over-confidence demo (``gammace-ref demo``) on a tiny configuration."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed: the demo needs the demo extra")
pytest.importorskip("matplotlib", reason="matplotlib is not installed: the demo needs the demo extra")

from gammace_ref import demo  # noqa: E402
from gammace_ref._cli import main  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def test_tiny_run_writes_table_json_and_figures(tmp_path):
    result = demo.run(noise=(0.4,), seeds=1, seed=5, epochs=2, out=tmp_path, progress=None)
    assert len(result.runs) == len(demo.LOSSES)
    assert sorted(p.rsplit("/", 1)[-1] for p in map(str, result.files)) == sorted(demo.FILES)
    for name in demo.FILES:
        assert (tmp_path / name).stat().st_size > 0
    for name in ("demo-reliability.png", "demo-noise.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG

    lines = result.table.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["noise", "loss", "accuracy ↑", "NLL ↓", "ECE ↓", "confidence", "wrong labels fitted ↓"]
    rows = [ln for ln in lines[2:] if ln.startswith("| ")]
    assert [r.split("|")[2].strip() for r in rows] == [loss.name for loss in demo.LOSSES]
    assert all(r.split("|")[1].strip() == "40%" for r in rows)
    for run in result.runs:
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["ece"] <= 1.0
        assert 0.1 <= run["confidence"] <= 1.0 and run["nll"] > 0.0 and 0.0 <= run["fitted_noise"] <= 1.0
    assert (tmp_path / "demo-table.md").read_text(encoding="utf-8").endswith(result.table)
    saved = json.loads((tmp_path / "demo-results.json").read_text(encoding="utf-8"))
    assert saved["runs"] == result.runs and saved["noise"] == [0.4]


def test_the_same_seed_gives_the_same_numbers(tmp_path):
    losses = demo.LOSSES[:1]
    a = demo.run(noise=(0.2,), seeds=1, epochs=1, out=tmp_path / "a", losses=losses, progress=None, plots=False)
    b = demo.run(noise=(0.2,), seeds=1, epochs=1, out=tmp_path / "b", losses=losses, progress=None, plots=False)
    assert a.runs == b.runs


def test_cli_demo(tmp_path, capsys):
    assert main(["demo", "--noise", "0", "0.2", "--seeds", "1", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "| noise | loss |" in out and "12/12" in err
    assert (tmp_path / "demo-noise.png").exists()


def test_expected_calibration_error():
    conf = np.array([0.95, 0.95, 0.95, 0.95, 0.55, 0.55])
    correct = np.array([True, True, True, False, True, False])
    # bins (k/15, (k+1)/15]: (0.933, 1] holds 4 (accuracy 0.75, confidence 0.95), (0.533, 0.6] 2 (0.5 vs 0.55)
    assert demo.expected_calibration_error(conf, correct) == pytest.approx((4 * 0.2 + 2 * 0.05) / 6)
    assert demo.expected_calibration_error(np.array([1.0, 0.0]), np.array([True, False])) == 0.0


@pytest.mark.parametrize("kwargs", [{"noise": (0.95,)}, {"noise": ()}, {"seeds": 0}, {"epochs": 0}])
def test_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        demo.run(out=tmp_path, progress=None, **kwargs)


def test_cli_defaults_are_the_demos(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"training epochs (default: {demo.EPOCHS})" in out and f"(default: {demo.SEEDS})" in out
    assert "(default: [0.0, 0.2, 0.4])" in out and tuple(demo.NOISE) == (0.0, 0.2, 0.4)


def test_cli_bad_noise_is_a_message_not_a_traceback(tmp_path):
    with pytest.raises(SystemExit, match="noise levels must be in"):
        main(["demo", "--noise", "0.95", "--out", str(tmp_path)])
