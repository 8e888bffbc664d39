"""The worked examples of docs/language-models.md run (each file is included in the page as it is here)."""

import pathlib
import runpy

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "docs" / "examples"

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")]


@pytest.mark.parametrize("name, needs, says", [
    ("torch_loop.py", "torch", "'clipped'"),
    ("jax_optax.py", "optax", "loss after 10 steps"),
    ("hf_trainer.py", "transformers", "'clipped_fraction'"),
])
def test_example_runs(name, needs, says, tmp_path, monkeypatch, capsys):
    pytest.importorskip(needs)
    monkeypatch.chdir(tmp_path)  # the Trainer example writes its output folder here
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    assert says in capsys.readouterr().out



def test_lm_guidance_table_is_the_scripts_output():
    """The table in the page is docs/examples/lm_guidance.py's output (its JSON is kept beside it)."""
    import json

    data = json.loads((EXAMPLES / "lm-guidance.json").read_text(encoding="utf-8"))
    page = (EXAMPLES.parent / "language-models.md").read_text(encoding="utf-8")
    for run in data["runs"]:
        row = next(line for line in page.splitlines() if line.startswith(f"| {run['label']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert [float(c.split()[0]) for c in cells] == [round(h["eval_nll"], 2) for h in run["heldout"]]
        weights = [float(c.split("(")[1].rstrip(")")) for c in cells]
        assert weights == pytest.approx([h["eval_mean_weight"] for h in run["heldout"]], rel=0.06, abs=1e-4)
