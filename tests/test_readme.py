"""The README's promises: its relative links resolve, its test command is the one CI runs, and its
library examples run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_relative_links_resolve():
    targets = [t for t in re.findall(r"\]\(([^)\s#]+)\)", README) if "://" not in t]
    assert targets, "the README should link to its docs, tutorials and gallery"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_ci_runs_the_readme_test_command():
    command = 'python -m pip install -e ".[test]" && python -m pytest'
    assert command in README
    assert command in (ROOT / ".ci" / "run").read_text()


def test_library_examples_run():
    # Every ```python block of the README's "Library" section runs as written, and the
    # shapes its comments promise are the shapes it produces.
    section = README.split("## Library", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    env = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), env)
    assert env["elbo"].shape == (128,) and env["ll"].shape == (8,)
    assert env["log_p"].shape == (1, 128) and env["logits"].shape == (128, 784)
    assert env["errors"] and max(env["errors"].values()) < 1e-6
