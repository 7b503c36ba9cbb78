"""The gradient checker itself: it must agree with known derivatives and catch wrong ones."""

import numpy as np
import pytest

from numpyvae.gradcheck import (check_layer_backward, check_param_grads, numerical_gradient,
                                rel_error)
from numpyvae.layers import Linear


def test_rel_error_definition():
    a = np.array([1.0, -2.0, 4.0])
    assert rel_error(a, a) == 0.0
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    # max |a - n| / max(max|a|, max|n|) = 0.5 / 4
    assert rel_error(a, a + np.array([0.0, 0.5, 0.0])) == pytest.approx(0.5 / 4)
    # a wrong sign and a missing factor of 2 are errors of order one
    assert rel_error(a, -a) == pytest.approx(2.0)
    assert rel_error(a, 2 * a) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(np.zeros(2), np.zeros(3))


def test_numerical_gradient_of_known_function():
    # f(x) = sum(sin(x) * x^2): df/dx = cos(x) x^2 + 2 x sin(x)
    x = np.random.default_rng(0).standard_normal((3, 4))
    num = numerical_gradient(lambda: np.sum(np.sin(x) * x ** 2), x)
    exact = np.cos(x) * x ** 2 + 2 * x * np.sin(x)
    assert rel_error(num, exact) < 1e-9
    x_before = x.copy()
    numerical_gradient(lambda: np.sum(x ** 3), x)
    assert np.array_equal(x, x_before), "x must be restored after perturbation"


def test_checker_catches_wrong_gradients():
    x = np.random.default_rng(1).standard_normal(5)
    params = {"x": x}
    loss = lambda: float(np.sum(x ** 2))  # noqa: E731
    assert check_param_grads(loss, params, {"x": 2 * x})["x"] < 1e-9
    assert check_param_grads(loss, params, {"x": x})["x"] > 0.4        # missing factor 2
    assert check_param_grads(loss, params, {"x": -2 * x})["x"] > 1.0   # wrong sign


def test_layer_check_catches_broken_backward():
    rng = np.random.default_rng(2)
    layer = Linear(4, 3, rng, dtype=np.float64)
    x = rng.standard_normal((5, 4))
    assert max(check_layer_backward(layer, x, rng=rng).values()) < 1e-8

    class Broken(Linear):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["W"] = self.grads["W"] * 0.5
            return dx

    broken = Broken(4, 3, rng, dtype=np.float64)
    errs = check_layer_backward(broken, x, rng=rng)
    assert errs["x"] < 1e-8 and errs["W"] > 0.4


def test_float32_is_refused():
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: 0.0, np.zeros(3, dtype=np.float32))


def test_nan_is_never_close():
    # max(0.0, nan) is 0.0 in Python: without an explicit check a NaN next to zeros would pass.
    assert rel_error(np.zeros(2), np.array([0.0, np.nan])) == np.inf
    assert rel_error(np.array([np.inf, 1.0]), np.array([1.0, 1.0])) == np.inf
