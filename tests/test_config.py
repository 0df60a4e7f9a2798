import subprocess
import sys

import pytest

from phaselib import params
from phaselib.config import ConfigError, RunConfig

BAD_RUNS = [
    (dict(frac=0.0), "frac", "(0, 1)"), (dict(frac=1.0), "frac", "(0, 1)"), (dict(frac=-0.2), "frac", "(0, 1)"),
    (dict(modulus=1), "modulus", ">= 2"), (dict(epochs=0), "epochs", "> 0"), (dict(epochs=-5), "epochs", "> 0"),
    (dict(task="vision"), "task", "modular"), (dict(operation="pow"), "operation", "add"),
    (dict(operation="div", modulus=12), "modulus", "prime"), (dict(width=0), "width", "> 0"),
    (dict(lr=0.0), "lr", "> 0"), (dict(lr=-1e-3), "lr", "> 0"), (dict(weight_decay=-0.1), "weight_decay", ">= 0"),
    (dict(record_every=0), "record_every", ">= 1"), (dict(engine="turbo"), "engine", "reference"),
    (dict(modulus=2, frac=0.1), "frac", "at least one train"),
]


@pytest.mark.parametrize("bad,key,allowed", BAD_RUNS)
def test_invalid_run_config_names_key_and_range(bad, key, allowed):
    with pytest.raises(ConfigError) as e:
        RunConfig(**bad)
    assert str(e.value).startswith(f"{key}:") and allowed in str(e.value)


def test_unknown_run_key():
    with pytest.raises(ConfigError, match="^colour: unknown key"):
        RunConfig.from_dict({"colour": "red"})


def test_hash_is_stable_and_ignores_device():
    a = RunConfig(seed=1)
    assert a.key == RunConfig(seed=1, device="cpu:0", threads=2).key
    assert a.key != RunConfig(seed=2).key
    assert RunConfig(task="regression", operation="mul").key == RunConfig(task="regression").key
    assert a.key == "8d0173c7f3f90484"  # a change here silently orphans every stored run


BAD_PARAMS = [
    ({"primary_fracs": [0.5, 1.5]}, "primary_fracs"), ({"modulus": 1}, "modulus"), ({"primary_epochs": 0}, "primary_epochs"),
    ({"variance_tasks": ["vision"]}, "variance_tasks"), ({"primary_operations": ["pow"]}, "primary_operations"),
    ({"bogus": 1}, "bogus"), ({"primary_operations": ["div"], "modulus": 21}, "modulus"), ({"width": 0}, "width"),
    ({"lr": 0}, "lr"), ({"sg_window": 50}, "sg_window"), ({"threshold": 2}, "threshold"),
    ({"min_hit_rate": 1.5}, "min_hit_rate"),
    ({"primary_fracs": 0.5}, "primary_fracs"),
]


@pytest.mark.parametrize("values,key", BAD_PARAMS)
def test_invalid_params_name_the_key(values, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        params.from_mapping(values)


def test_shipped_param_files_are_valid():
    for name in ("paper", "ci"):
        p = params.load(f"params/{name}.yaml")
        assert p.modulus == 97
    assert params.load("params/paper.yaml").primary_epochs == 3000


def test_malformed_yaml(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("modulus: [97\nfrac: :\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        params.load(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        params.load(f)


@pytest.mark.parametrize("body,key", [("primary_fracs: [0.0]\n", "primary_fracs"), ("modulus: 1\n", "modulus"),
                                      ("nonsense: 3\n", "nonsense"), ("width: [\n", "params")])
def test_cli_fails_before_any_training(tmp_path, body, key):
    f = tmp_path / "p.yaml"
    f.write_text(body)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "phaselib.cli", "sweep", "--params", str(f), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"invalid parameters: {key}:" in r.stderr
    assert not out.exists()  # nothing was created, let alone trained


def test_notebook_out_dir_can_be_redirected(monkeypatch):
    """make test sends the notebooks' runs to a fresh directory through PHASELIB_NOTEBOOK_OUT."""
    ns = {"out_dir": "results/notebook", "modulus": 13, "unrelated": object()}
    monkeypatch.delenv(params.OUT_DIR_ENV, raising=False)
    assert params.from_namespace(ns).out_dir == "results/notebook"
    monkeypatch.setenv(params.OUT_DIR_ENV, "/tmp/fresh-notebook-runs")
    p = params.from_namespace(ns)
    assert p.out_dir == "/tmp/fresh-notebook-runs" and p.modulus == 13
