"""The README's "on your own model" example runs as written, and its detectors say what it says."""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def block(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text()
    rest = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", rest, re.S).group(1)


def test_the_own_model_example_runs_and_finds_the_step_it_describes():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block("### Signals and detectors on your own model"), "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].count("converged=True") == 2  # lambda_max and lambda_min
    assert lines[-3].startswith("transition flagged at index ") and int(lines[-3].split()[4]) >= 300
    assert lines[-2].startswith("transition at index 300 ")
    assert lines[-1].startswith("no transition")
