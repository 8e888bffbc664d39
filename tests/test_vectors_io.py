"""Reading and writing the golden vectors: every malformed file is named with its field, nothing is
checked silently, and writing never overwrites by surprise nor leaves a stale file.

The conformance suite (gammace_ref/conformance/test_vectors.py) checks the shipped files' contents;
these tests check :func:`gammace_ref.testing.vectors.load` and :func:`~gammace_ref.testing.vectors.write`.
"""

import json
import os

import numpy as np
import pytest

from gammace_ref.testing import vectors


def _doc(regime="tiny", **edit):
    """A valid one-file document; ``edit`` maps a dotted path (``float64.cases.0.gamma``) to a new value."""
    doc = {"format": vectors.FORMAT, "version": vectors.VERSION, "regime": regime, "description": "",
           "notes": "", "reference": "", "reduction": "none"}
    for dtype in vectors.DTYPES:
        doc[dtype] = {"logits": [["0.5", "-1.0", "2.0"], ["0.0", "0.0", "0.0"]], "targets": [2, 0], "cases": [
            {"loss": "gamma_ce", "gamma": "0.5", "threshold": None, "label_smoothing": "0.0",
             "expected_loss": ["0.25", "1.0"], "expected_grad": [["0.1", "0.2", "-0.3"], ["-0.5", "0.25", "0.25"]]},
            {"loss": "tailr", "gamma": "0.5", "threshold": "0.2", "label_smoothing": "0.1",
             "expected_loss": ["0.25", "1.0"], "expected_grad": [["0.1", "0.2", "-0.3"], ["-0.5", "0.25", "0.25"]]}]}
    for path, value in edit.items():
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return doc


def _write(directory, doc, name=None):
    path = directory / f"{name or doc['regime']}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_the_shipped_vectors_load_by_default_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = vectors.load()
    assert {c.regime for c in cases} == set(vectors.regime_names())
    assert len(cases) == len(vectors.load(vectors.shipped())) > 200
    assert {c.regime for c in vectors.load(names=["p_to_1"])} == {"p_to_1"}


def test_a_valid_file_loads(tmp_path):
    _write(tmp_path, _doc())
    c64, t64, c32, t32 = vectors.load(tmp_path)
    assert (c64.loss, t64.loss, t64.threshold, t64.label_smoothing) == ("gamma_ce", "tailr", 0.2, 0.1)
    assert c32.logits.dtype == np.float32 and c64.expected_grad.shape == (2, 3)
    assert c64.targets.tolist() == [2, 0]


@pytest.mark.parametrize("setup", ["missing", "empty", "only_other_files", "a_file"])
def test_no_vector_files_raises_naming_the_path(tmp_path, setup):
    target = tmp_path / "vectors"
    if setup == "empty":
        target.mkdir()
    elif setup == "only_other_files":
        target.mkdir()
        (target / "README.md").write_text("not vectors")
    elif setup == "a_file":
        target.write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(target)):
        vectors.load(target)


def test_an_unknown_regime_name_raises(tmp_path):
    _write(tmp_path, _doc())
    with pytest.raises(FileNotFoundError, match="no file for regime.*p_to_1"):
        vectors.load(tmp_path, names=["tiny", "p_to_1"])


BROKEN = {  # case: (edit of the valid document, the field the message must name, what it must say)
    "target out of range": ({"float64.targets": [3, 0]}, "float64.targets[0]", "outside [0, C)"),
    "negative target": ({"float32.targets": [2, -1]}, "float32.targets[1]", "outside [0, C)"),
    "float target": ({"float64.targets": [2.0, 0]}, "float64.targets[0]", "expected an integer"),
    "a target short": ({"float64.targets": [2]}, "float64.targets", "expected 2 integers"),
    "unknown loss": ({"float64.cases.0.loss": "foo"}, "float64.cases[0].loss", "'foo'"),
    "gamma above 1": ({"float32.cases.1.gamma": "1.5"}, "float32.cases[1].gamma", "1.5 is outside [0, 1]"),
    "negative gamma": ({"float64.cases.0.gamma": "-0.1"}, "float64.cases[0].gamma", "outside [0, 1]"),
    "nan gamma": ({"float64.cases.0.gamma": "nan"}, "float64.cases[0].gamma", "outside [0, 1]"),
    "gamma as a number": ({"float64.cases.0.gamma": 0.5}, "float64.cases[0].gamma", "JSON string"),
    "threshold above 1": ({"float64.cases.1.threshold": "2"}, "float64.cases[1].threshold", "outside [0, 1]"),
    "tailr without threshold": ({"float64.cases.1.threshold": None}, "float64.cases[1].threshold",
                                "JSON string"),
    "threshold on gamma_ce": ({"float64.cases.0.threshold": "0.2"}, "float64.cases[0].threshold",
                              "null for gamma_ce"),
    "smoothing above 1": ({"float64.cases.1.label_smoothing": "1.5"}, "float64.cases[1].label_smoothing",
                          "outside [0, 1]"),
    "loss of the wrong length": ({"float64.cases.0.expected_loss": ["0.25"]}, "float64.cases[0].expected_loss",
                                 "shape (1,)"),
    "grad of the wrong shape": ({"float32.cases.0.expected_grad": [["0.1", "0.2"], ["0.1", "0.2"]]},
                                "float32.cases[0].expected_grad", "shape (2, 2)"),
    "ragged logits": ({"float64.logits": [["0.5", "1.0", "2.0"], ["0.0"]]}, "float64.logits", "equal length"),
    "not a float": ({"float64.logits": [["0.5", "x", "2.0"], ["0.0", "0.0", "0.0"]]}, "float64.logits",
                    "'x' is not a decimal float"),
    "a float as a number": ({"float32.cases.0.expected_loss": [0.25, "1.0"]}, "float32.cases[0].expected_loss",
                            "JSON string"),
    "no cases": ({"float64.cases": []}, "float64.cases", "non-empty list"),
    "a missing group": ({"float32": None}, "float32", "the float32 group"),
    "wrong reduction": ({"reduction": "mean"}, "reduction", "'mean'"),
    "regime not the file name": ({"regime": "other"}, "regime", "'tiny'"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_malformed_file_raises_naming_the_file_and_the_field(tmp_path, case):
    edit, field, what = BROKEN[case]
    path = _write(tmp_path, _doc(**edit), name="tiny")
    with pytest.raises(ValueError) as info:
        vectors.load(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}: "), message
    assert what in message, message


def test_a_parse_error_names_the_file(tmp_path):
    _write(tmp_path, _doc())
    bad = tmp_path / "zzz.json"
    bad.write_text('{"format": "gammace-ref golden vectors", "version": 1,', encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{bad}: not valid JSON: "):
        vectors.load(tmp_path)
    bad.write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{bad}: not a golden-vector file"):
        vectors.load(tmp_path)


# --------------------------------------------------------------------------- write


@pytest.fixture
def small_generate(monkeypatch):
    """``vectors.generate`` returning two tiny documents (the real one takes seconds: tests/test_wheel.py runs it)."""
    texts = {f"{n}.json": json.dumps(_doc(n)) + "\n" for n in ("alpha", "beta")}
    monkeypatch.setattr(vectors, "generate", lambda names=None: dict(texts))
    return texts


def test_write_creates_the_directory_and_load_reads_it_back(tmp_path, small_generate):
    out = tmp_path / "a" / "b"
    paths = vectors.write(out)
    assert sorted(p.name for p in paths) == sorted(small_generate) == sorted(os.listdir(out))
    assert {c.regime for c in vectors.load(out)} == {"alpha", "beta"}


def test_write_refuses_a_directory_that_is_not_empty_unless_forced(tmp_path, small_generate):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        vectors.write(tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]  # untouched


def test_forced_write_replaces_the_vectors_removes_stale_ones_and_keeps_other_files(tmp_path, small_generate):
    _write(tmp_path, _doc("alpha"))  # a vector file that will be replaced
    _write(tmp_path, _doc("retired"))  # a vector file the generator no longer writes: stale
    (tmp_path / "README.md").write_text("kept")
    (tmp_path / "other.json").write_text('{"not": "a vector file"}')
    vectors.write(tmp_path, force=True)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "alpha.json", "beta.json", "other.json"]
    assert (tmp_path / "alpha.json").read_text() == small_generate["alpha.json"]


def test_write_onto_a_file_raises_before_generating(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors, "generate", lambda names=None: pytest.fail("generated anyway"))
    target = tmp_path / "file.json"
    target.write_text("x")
    with pytest.raises(NotADirectoryError):
        vectors.write(target, force=True)
    with pytest.raises(OSError):
        vectors.write(target / "sub")
    assert target.read_text() == "x"


def test_a_failed_generation_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    _write(tmp_path, _doc("alpha"))
    before = (tmp_path / "alpha.json").read_bytes()

    def broken(names=None):
        raise RuntimeError("mpmath exploded")

    monkeypatch.setattr(vectors, "generate", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        vectors.write(tmp_path, force=True)
    assert os.listdir(tmp_path) == ["alpha.json"] and (tmp_path / "alpha.json").read_bytes() == before
