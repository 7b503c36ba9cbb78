"""Start-up code shared by the tutorials: command-line options, the output folder, the seed.

Every tutorial begins with

    from tutorial import setup
    args = setup("03_reparam_vs_reinforce", quick="R = 200, L in {1, 10}: seconds")

and then reads ``args.quick`` (a tiny version of everything, for the test suite), ``args.out``
(the folder its figures go to, created here) and ``args.seed`` (seeds everything random, through
``np.random.default_rng``). Run as a script it parses ``--quick``, ``--out DIR`` and ``--seed S``;
opened as a notebook (Jupyter or VS Code with jupytext, where there is no command line) it takes
the defaults, the full version. It also lets numpyvae spread its work over its own threads with
BLAS on one, as the command line does (numpyvae.parallel.use_own_threads).
"""

import argparse
import os
import sys

import numpyvae

__all__ = ["setup", "show"]


def _in_a_notebook():
    # A Jupyter kernel's command line is the kernel's own (-f connection-file), not the tutorial's.
    return "ipykernel" in sys.modules


def setup(name, quick, argv=None):
    """Parse the tutorial's options and create its output folder.

    name: the tutorial's file name without ".py" (the default folder is tutorial_output/NAME).
    quick: what --quick shrinks, for its help line.
    Returns an argparse.Namespace with quick (bool), out (str) and seed (int).
    """
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=f"numpyvae tutorial {name}")
    parser.add_argument("--quick", action="store_true", help=f"a tiny version for the test suite ({quick})")
    parser.add_argument("--out", default=os.path.join("tutorial_output", name),
                        help="folder for the figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seeds everything random (default: %(default)s)")
    args = parser.parse_args([] if argv is None and _in_a_notebook() else argv)
    os.makedirs(args.out, exist_ok=True)
    numpyvae.parallel.use_own_threads()     # as the command line runs (README, "Speed")
    return args


def show(path):
    """Show a figure the tutorial has saved (a PNG file at ``path``) below the notebook cell; in a
    script, do nothing (the tutorial prints where its figures are). The tutorials draw without
    pyplot, so a notebook would not show them otherwise."""
    if _in_a_notebook():
        from IPython.display import Image, display     # present wherever a Jupyter kernel runs
        display(Image(filename=path))
