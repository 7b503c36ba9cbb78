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


def test_there_are_twelve_tutorials():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, 13)], [p.name for p in TUTORIALS]


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
