"""Shared test helpers.

``grad_report`` records the relative error (Eq. (C2), docs/gradcheck.md) of every gradient
check by component; the worst of each is printed at the end of the run, so a reader sees
how close each hand-written backward pass is, not only that it passed.
"""

import os
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("default", max_examples=30, deadline=None, derandomize=True)
settings.register_profile("thorough", max_examples=300, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The bar every gradient check in the suite is held to (issue 2: "below 1e-6").
GRAD_TOL = 1e-6

_worst = defaultdict(float)


@pytest.fixture
def grad_report():
    """Call ``grad_report(component, errors)`` with a float or a {name: error} dict; it records
    the worst value and asserts it is below GRAD_TOL."""
    def record(component, errors):
        worst = max(errors.values()) if isinstance(errors, dict) else float(errors)
        _worst[component] = max(_worst[component], worst)
        assert worst < GRAD_TOL, f"{component}: relative error {worst:.3g} >= {GRAD_TOL} ({errors})"
        return worst
    return record


def pytest_terminal_summary(terminalreporter):
    if _worst:
        terminalreporter.write_sep("-", "worst gradient-check relative error per component")
        for name in sorted(_worst):
            terminalreporter.write_line(f"{name:<40s} {_worst[name]:.2e}")


def relu_margin(model):
    """Smallest |pre-activation| over every hidden Linear of the last forward pass. A finite
    difference of step h is only valid for a ReLU net if this exceeds h."""
    margins = [np.inf]
    for mlp in (model.encoder, model.decoder):
        for lin in mlp.linears:
            pre = lin.cache @ lin.params["W"] + lin.params["b"]
            margins.append(np.min(np.abs(pre)))
    return float(min(margins))


def randomise_biases(model, rng):
    """Zero-initialised biases would hide a bias gradient that is wrong by a missing sum."""
    for k, v in model.params.items():
        if k.endswith(".b"):
            v[:] = 0.3 * rng.standard_normal(v.shape)


def error_reading_fifo(read, path):
    """Make a FIFO at ``path``, call ``read(path)`` in a thread and return what it raised.
    Fails the test if the call blocks (a reader that opens a FIFO waits for a writer forever)
    or returns without raising."""
    import threading
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    os.mkfifo(path)
    outcome = {}

    def call():
        try:
            read(path)
        except BaseException as e:  # noqa: B902 - recorded and checked by the caller
            outcome["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=10)
    if thread.is_alive():  # stuck in open(): give it a writer so the run can go on
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5)
        pytest.fail(f"{read.__name__} blocked on a FIFO")
    assert "error" in outcome, f"{read.__name__} read a FIFO without an error"
    return outcome["error"]
