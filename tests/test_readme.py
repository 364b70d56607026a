"""Every Python example of the README runs (doctest blocks are checked as doctests)."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # whatever an example writes stays in the test's folder
    if code.lstrip().startswith(">>>"):
        parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
        runner.run(parser.get_doctest(code, {}, "README", str(README), 0))
        assert runner.summarize(verbose=False).failed == 0, capsys.readouterr().out
    else:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
