"""The README's promises: its relative links resolve, and its test command is the one CI runs."""

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
