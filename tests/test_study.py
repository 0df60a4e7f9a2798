import json
import os

import nbformat
import pytest

from phaselib import params
from phaselib.study import run_study


def write_nb(path, *sources, parameters="x = 1"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(parameters)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, *(nbformat.v4.new_code_cell(s) for s in sources)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def tiny_params(tmp_path):
    return params.from_mapping(dict(modulus=11, width=8, primary_tasks=["modular"], primary_fracs=[0.5], primary_epochs=20,
                                    variance_fracs=[0.5], variance_seeds=[42], variance_epochs=20,
                                    out_dir=str(tmp_path / "out")))


def test_study_runs_notebooks_in_order_with_declared_params(tmp_path, tiny_params):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "00_a.ipynb", "open(out_dir + '/seen.txt', 'w').write(str(modulus))",
             parameters="modulus = 3\nout_dir = 'x'")
    write_nb(nbs / "01_b.ipynb", "assert open(out_dir + '/seen.txt').read() == '11'", parameters="out_dir = 'x'")
    assert run_study(tiny_params, folder=nbs) == 0
    out = tmp_path / "out"
    assert (out / "notebooks" / "01_b.ipynb").exists() and (out / "summary.csv").exists()
    assert set(json.loads((out / "timings.json").read_text())) >= {"train_s", "00_a.ipynb", "01_b.ipynb", "total_s"}


def test_a_failing_cell_exits_nonzero_naming_notebook_and_cell(tmp_path, tiny_params, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "00_ok.ipynb", "y = 2")
    write_nb(nbs / "01_broken.ipynb", "y = 2", "raise RuntimeError('boom')")
    write_nb(nbs / "02_never.ipynb", "y = 3")
    assert run_study(tiny_params, folder=nbs) == 1
    err = capsys.readouterr().err
    assert "01_broken.ipynb" in err and "cell" in err and "RuntimeError" in err and "boom" in err
    assert not (tmp_path / "out" / "notebooks" / "02_never.ipynb").exists()


def test_the_study_out_dir_wins_over_the_notebook_redirect(tmp_path, tiny_params, monkeypatch):
    """PHASELIB_NOTEBOOK_OUT (set by make test for nbval) must not move a study's runs elsewhere."""
    monkeypatch.setenv(params.OUT_DIR_ENV, str(tmp_path / "elsewhere"))
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "00_a.ipynb", "from phaselib import params\n"
             "open(out_dir + '/seen.txt', 'w').write(params.from_namespace(globals()).out_dir)",
             parameters="out_dir = 'x'")
    assert run_study(tiny_params, folder=nbs) == 0
    assert (tmp_path / "out" / "seen.txt").read_text() == str((tmp_path / "out").resolve())
    assert os.environ[params.OUT_DIR_ENV] == str(tmp_path / "elsewhere")  # restored for the caller
