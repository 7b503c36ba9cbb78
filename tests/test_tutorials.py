"""Every tutorial runs in its --quick mode: it must exit 0, print what it shows, and write
the figures it promises (each tutorial lists them in a FIGURES tuple at module level)."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

TUTORIALS = sorted(pathlib.Path(__file__).resolve().parent.parent.joinpath("tutorials").glob("[0-9][0-9]_*.py"))


def declared_figures(path):
    """The FIGURES tuple of a tutorial, read without running it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIGURES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError(f"{path.name} has no module-level FIGURES = (...) tuple")


def test_tutorials_are_numbered_without_gaps():
    assert len(TUTORIALS) >= 12 and [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, len(TUTORIALS) + 1)], \
        [p.name for p in TUTORIALS]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_quick(path, tmp_path):
    # One BLAS thread: the tutorial's process would otherwise compete with this one for the
    # cores, and OpenBLAS's spinning threads slow down 10-100x when oversubscribed.
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(path), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert len(proc.stdout.strip().splitlines()) >= 3, f"{path.name} should print what it shows"
    for name in declared_figures(path):
        f = tmp_path / name
        assert f.exists() and f.read_bytes()[:4] == b"\x89PNG", f"{path.name} did not write {name}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_an_annotated_notebook(path):
    """jupytext "percent" format: it opens with a markdown cell, prose cells sit between the code
    cells, the code runs at module level (no main()), and the start-up code is the shared helper."""
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# %% [markdown]", f"{path.name} must open with a markdown cell"
    markdown = sum(line == "# %% [markdown]" for line in lines)
    code = sum(line == "# %%" for line in lines)
    assert markdown >= 3 and code >= 3, (path.name, markdown, code)
    tree = ast.parse(text)
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), path.name
    assert "__main__" not in text, f"{path.name}: code runs at module level, cell by cell"
    assert "from tutorial import setup" in text and "argparse" not in text, path.name
