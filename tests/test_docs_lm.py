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
    """The table in the page comes from docs/examples/lm_guidance.py (its JSON is kept beside it)."""
    import json

    data = json.loads((EXAMPLES / "lm-guidance.json").read_text())
    table = (EXAMPLES / "lm-guidance-table.md").read_text()
    for run in data["runs"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| {run['label']} |"))
        assert row.endswith(" | ".join(f"{h['eval_nll']:.2f}" for h in run["heldout"]) + " |")
