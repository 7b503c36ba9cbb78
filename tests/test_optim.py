"""
Tests for numpyvae/optim.py.

Every numerical test compares the optimiser against something written
independently here: a scalar Python loop, a closed-form recurrence, a hand
computation, or a known property of the algorithm.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numpyvae.optim import SGD, Adam, clip_grad_norm


def make_params(rng, dtype=np.float64):
    return {
        "enc.W": rng.normal(size=(3, 4)).astype(dtype),
        "enc.b": rng.normal(size=(4,)).astype(dtype),
        "dec.W": rng.normal(size=(4, 2)).astype(dtype),
    }


def random_grads(rng, params, dtype=None):
    return {
        k: rng.normal(size=p.shape).astype(dtype or p.dtype) for k, p in params.items()
    }


OPTIMISERS = [
    pytest.param(lambda params, **kw: SGD(params, lr=0.01, momentum=0.9, **kw), id="SGD"),
    pytest.param(lambda params, **kw: Adam(params, lr=0.01, **kw), id="Adam"),
]


# ---------------------------------------------------------------- Adam maths


def test_adam_first_step_moves_each_coordinate_by_lr_times_sign():
    # With bias correction, m_hat = g and v_hat = g^2 on step 1, so the
    # update is lr * g / (|g| + eps) = lr * sign(g) when |g| >> eps.
    rng = np.random.default_rng(0)
    magnitudes = 10.0 ** rng.uniform(-1, 3, size=(5, 6))  # |g| in [0.1, 1000]
    g = magnitudes * rng.choice([-1.0, 1.0], size=(5, 6))
    g[0, 0] = 0.0  # a zero gradient must not move its coordinate
    p0 = rng.normal(size=(5, 6))
    params = {"w": p0.copy()}
    lr = 1e-3

    Adam(params, lr=lr).step({"w": g})

    step = params["w"] - p0
    np.testing.assert_allclose(step, -lr * np.sign(g), rtol=1e-6, atol=1e-15)
    assert step[0, 0] == 0.0


def adam_reference(p0, grads_seq, lr, beta1, beta2, eps, lrs=None):
    """Adam, Algorithm 1 of Kingma & Ba, one Python float at a time."""
    p = [float(x) for x in p0.ravel()]
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g_arr in enumerate(grads_seq, start=1):
        step_lr = lrs[t - 1] if lrs is not None else lr
        for i, g in enumerate(float(x) for x in g_arr.ravel()):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            m_hat = m[i] / (1 - beta1**t)
            v_hat = v[i] / (1 - beta2**t)
            p[i] = p[i] - step_lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(p).reshape(p0.shape)


def test_adam_matches_scalar_reference_loop():
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(3, 2))
    grads_seq = [rng.normal(size=(3, 2)) * rng.uniform(0.01, 10) for _ in range(7)]
    hyper = dict(lr=0.05, beta1=0.8, beta2=0.95, eps=1e-6)

    params = {"w": p0.copy()}
    opt = Adam(params, **hyper)
    for g in grads_seq:
        opt.step({"w": g})

    expected = adam_reference(p0, grads_seq, **hyper)
    np.testing.assert_allclose(params["w"], expected, rtol=1e-12, atol=1e-14)
    # Guard against the test being vacuous: the parameters really moved.
    assert not np.allclose(params["w"], p0)


def test_changing_lr_between_steps_is_used():
    rng = np.random.default_rng(2)
    p0 = rng.normal(size=(4,))
    grads_seq = [rng.normal(size=(4,)) for _ in range(6)]
    lrs = [0.1, 0.1, 0.01, 0.01, 0.3, 0.0]

    params = {"w": p0.copy()}
    opt = Adam(params, lr=lrs[0])
    for lr, g in zip(lrs, grads_seq):
        opt.lr = lr
        opt.step({"w": g})

    expected = adam_reference(p0, grads_seq, None, 0.9, 0.999, 1e-8, lrs=lrs)
    np.testing.assert_allclose(params["w"], expected, rtol=1e-12, atol=1e-14)


def test_lr_must_be_a_finite_non_negative_number():
    opt = Adam({"w": np.zeros(2)})
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            opt.lr = bad


# ----------------------------------------------------------------- SGD maths


def test_sgd_momentum_on_1d_quadratic_matches_closed_form_recurrence():
    # f(x) = a/2 (x - c)^2, gradient a (x - c). With e = x - c, heavy-ball
    # momentum is the linear recurrence
    #   [e_{t+1}, v_{t+1}] = M [e_t, v_t],  M = [[1 - lr a, mu], [-lr a, mu]]
    # (v_{t+1} = mu v_t - lr a e_t, e_{t+1} = e_t + v_{t+1}), so after n steps
    # [e_n, v_n] = M^n [e_0, 0].
    a, c, lr, mu, x0, n = 3.0, -1.5, 0.05, 0.9, 2.0, 25
    params = {"x": np.array([x0])}
    opt = SGD(params, lr=lr, momentum=mu)
    for _ in range(n):
        opt.step({"x": a * (params["x"] - c)})

    M = np.array([[1 - lr * a, mu], [-lr * a, mu]])
    e_n, v_n = np.linalg.matrix_power(M, n) @ np.array([x0 - c, 0.0])
    np.testing.assert_allclose(params["x"][0], c + e_n, rtol=1e-12)
    np.testing.assert_allclose(opt.state["velocity"]["x"][0], v_n, rtol=1e-12)


def test_sgd_without_momentum_is_plain_gradient_descent():
    rng = np.random.default_rng(3)
    p0 = rng.normal(size=(5,))
    g = rng.normal(size=(5,))
    params = {"w": p0.copy()}
    SGD(params, lr=0.1, momentum=0.0).step({"w": g})
    np.testing.assert_allclose(params["w"], p0 - 0.1 * g, rtol=0, atol=1e-15)


# --------------------------------------------------------------- convergence


@pytest.mark.parametrize(
    "make_opt, n_steps",
    [
        pytest.param(lambda p: SGD(p, lr=0.05, momentum=0.9), 500, id="SGD"),
        pytest.param(lambda p: Adam(p, lr=0.05), 2000, id="Adam"),
    ],
)
def test_converges_to_minimum_of_convex_quadratic(make_opt, n_steps):
    # f(x) = 1/2 (x - c)^T A (x - c) with A symmetric positive definite:
    # the unique minimum is x = c.
    rng = np.random.default_rng(4)
    Q = rng.normal(size=(4, 4))
    A = Q @ Q.T + 0.5 * np.eye(4)
    c = rng.normal(size=4)
    params = {"x": np.zeros(4)}
    opt = make_opt(params)
    for _ in range(n_steps):
        opt.step({"x": A @ (params["x"] - c)})
    np.testing.assert_allclose(params["x"], c, atol=1e-6)


# ------------------------------------------------------ dtypes and in-place


@pytest.mark.parametrize("make_opt", OPTIMISERS)
@pytest.mark.parametrize("grad_dtype", [np.float32, np.float64])
def test_float32_model_stays_float32(make_opt, grad_dtype):
    rng = np.random.default_rng(5)
    params = make_params(rng, dtype=np.float32)
    opt = make_opt(params, clip_norm=1.0)
    for _ in range(3):
        opt.step(random_grads(rng, params, dtype=grad_dtype))
    for name, p in params.items():
        assert p.dtype == np.float32, name
    for name, arr in opt.state_dict()["arrays"].items():
        assert arr.dtype == np.float32, name


def test_float32_adam_matches_float32_arithmetic():
    # The update must be computed in float32, not in float64 and rounded at
    # the end: compare against the same formulas evaluated in float32.
    rng = np.random.default_rng(6)
    p0 = rng.normal(size=(50,)).astype(np.float32)
    g = rng.normal(size=(50,)).astype(np.float32)
    params = {"w": p0.copy()}
    Adam(params, lr=1e-3).step({"w": g})

    f = np.float32
    m = (f(1) - f(0.9)) * g
    v = (f(1) - f(0.999)) * g * g
    m_hat = m / (f(1) - f(0.9))
    v_hat = v / (f(1) - f(0.999))
    expected = p0 - f(1e-3) * m_hat / (np.sqrt(v_hat) + f(1e-8))
    assert expected.dtype == np.float32
    np.testing.assert_allclose(params["w"], expected, rtol=1e-6)


@pytest.mark.parametrize("make_opt", OPTIMISERS)
def test_updates_are_in_place(make_opt):
    rng = np.random.default_rng(7)
    params = make_params(rng)
    # What a layer would hold: the same array objects, and views into them.
    layer_W = params["enc.W"]
    row_view = params["enc.W"][1]
    ids = {k: id(p) for k, p in params.items()}
    before = {k: p.copy() for k, p in params.items()}

    opt = make_opt(params)
    opt.step(random_grads(rng, params))

    assert {k: id(p) for k, p in params.items()} == ids
    assert params["enc.W"] is layer_W
    for k in params:
        assert not np.array_equal(params[k], before[k]), k
    np.testing.assert_array_equal(row_view, params["enc.W"][1])
    assert not np.array_equal(row_view, before["enc.W"][1])


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize("make_opt", OPTIMISERS)
def test_mismatched_keys_raise_and_name_the_key(make_opt):
    rng = np.random.default_rng(8)
    params = make_params(rng)
    opt = make_opt(params)
    grads = random_grads(rng, params)

    missing = dict(grads)
    del missing["enc.b"]
    with pytest.raises(ValueError, match="enc.b"):
        opt.step(missing)

    extra = dict(grads, **{"dec.b": np.zeros(2)})
    with pytest.raises(ValueError, match="dec.b"):
        opt.step(extra)


@pytest.mark.parametrize("make_opt", OPTIMISERS)
def test_mismatched_shape_raises_and_names_the_key(make_opt):
    rng = np.random.default_rng(9)
    params = make_params(rng)
    opt = make_opt(params)
    grads = random_grads(rng, params)
    grads["dec.W"] = grads["dec.W"].T  # (2, 4) instead of (4, 2)
    with pytest.raises(ValueError, match=r"dec\.W.*\(2, 4\)"):
        opt.step(grads)


@pytest.mark.parametrize("make_opt", OPTIMISERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("clip_norm", [None, 5.0])
def test_non_finite_gradient_raises_and_leaves_everything_untouched(make_opt, bad, clip_norm):
    rng = np.random.default_rng(10)
    params = make_params(rng)
    opt = make_opt(params, clip_norm=clip_norm)
    opt.step(random_grads(rng, params))  # non-trivial state first
    params_before = {k: p.copy() for k, p in params.items()}
    state_before = opt.state_dict()

    grads = random_grads(rng, params)
    grads["enc.b"][2] = bad
    with pytest.raises((FloatingPointError, ValueError), match="enc.b"):
        opt.step(grads)

    for k in params:  # including the parameters checked before "enc.b"
        np.testing.assert_array_equal(params[k], params_before[k])
    after = opt.state_dict()
    assert after["scalars"] == state_before["scalars"]
    for k in after["arrays"]:
        np.testing.assert_array_equal(after["arrays"][k], state_before["arrays"][k])


def test_rejects_non_float_and_read_only_params():
    with pytest.raises(ValueError, match="floating"):
        Adam({"w": np.zeros(3, dtype=np.int64)})
    frozen = np.zeros(3)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        SGD({"w": frozen}, lr=0.1)


# ------------------------------------------------------------- clipping


def test_clip_grad_norm_against_hand_computation():
    # ||(3, 4)||^2 + ||(12,)||^2 = 9 + 16 + 144 = 169 = 13^2
    grads = {"a": np.array([3.0, 4.0]), "b": np.array([[12.0]])}
    originals = {k: g.copy() for k, g in grads.items()}

    clipped, norm = clip_grad_norm(grads, max_norm=6.5)

    assert norm == 13.0
    np.testing.assert_allclose(clipped["a"], [1.5, 2.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"], [[6.0]], rtol=1e-15)
    # The inputs are untouched.
    for k in grads:
        np.testing.assert_array_equal(grads[k], originals[k])
        assert not np.shares_memory(clipped[k], grads[k])


def test_clip_grad_norm_below_threshold_returns_inputs_unchanged():
    grads = {"a": np.array([3.0, 4.0])}
    clipped, norm = clip_grad_norm(grads, max_norm=5.0)  # exactly at the limit
    assert norm == 5.0
    assert clipped is not grads
    assert clipped["a"] is grads["a"]


def test_clip_grad_norm_keeps_float32():
    grads = {"a": np.full(10, 100.0, dtype=np.float32)}
    clipped, norm = clip_grad_norm(grads, max_norm=1.0)
    assert clipped["a"].dtype == np.float32
    np.testing.assert_allclose(norm, 100.0 * math.sqrt(10), rtol=1e-12)
    # Squares of 1e30 overflow float32; the norm must still be right.
    _, big = clip_grad_norm({"a": np.full(4, 1e30, dtype=np.float32)}, 1.0)
    np.testing.assert_allclose(big, 2e30, rtol=1e-6)


def test_clip_grad_norm_rejects_bad_input():
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"a": np.ones(2)}, 0.0)
    with pytest.raises(ValueError, match="'a'"):
        clip_grad_norm({"a": np.array([1.0, np.nan])}, 1.0)


@settings(max_examples=50, deadline=None)
@given(
    g=hnp.arrays(
        np.float64,
        hnp.array_shapes(max_dims=2, max_side=5),
        elements=st.floats(-1e3, 1e3, allow_nan=False),
    ),
    max_norm=st.floats(1e-3, 1e3),
)
def test_clip_grad_norm_properties(g, max_norm):
    clipped, norm = clip_grad_norm({"g": g}, max_norm)
    np.testing.assert_allclose(norm, np.linalg.norm(g.ravel()), rtol=1e-12)
    new_norm = np.linalg.norm(clipped["g"].ravel())
    assert new_norm <= max_norm * (1 + 1e-12)
    if norm > max_norm:  # clipped: same direction, norm exactly max_norm
        np.testing.assert_allclose(new_norm, max_norm, rtol=1e-12)
        np.testing.assert_allclose(clipped["g"] * norm, g * max_norm, rtol=1e-9, atol=1e-9)
    else:
        assert clipped["g"] is g


def test_optimiser_applies_clipping():
    # One SGD step without momentum: p -= lr * clipped(g).
    p0 = np.array([1.0, 1.0])
    params = {"w": p0.copy()}
    SGD(params, lr=0.1, momentum=0.0, clip_norm=1.0).step({"w": np.array([30.0, 40.0])})
    np.testing.assert_allclose(params["w"], p0 - 0.1 * np.array([0.6, 0.8]), rtol=1e-15)


# ------------------------------------------------------------ resume


def quadratic_grads(params, noise):
    # Gradients depend on the current parameters, so any difference in the
    # resumed state would show up in every later step.
    return {k: 0.5 * p + n for (k, p), n in zip(params.items(), noise)}


@pytest.mark.parametrize("make_opt", OPTIMISERS)
@pytest.mark.parametrize("clip_norm", [None, 1.0])
def test_resume_from_state_dict_is_bit_for_bit(make_opt, clip_norm):
    rng = np.random.default_rng(11)
    start = make_params(rng)
    noise = [[rng.normal(size=p.shape) for p in start.values()] for _ in range(10)]
    lrs = [0.01] * 3 + [0.005] * 7  # lr changed mid-run, before the save

    def run(params, opt, steps):
        for t in steps:
            opt.lr = lrs[t]
            opt.step(quadratic_grads(params, noise[t]))

    # Uninterrupted: 10 steps.
    straight = {k: p.copy() for k, p in start.items()}
    run(straight, make_opt(straight, clip_norm=clip_norm), range(10))

    # Interrupted: 5 steps, save, fresh optimiser on a copy, load, 5 steps.
    first = {k: p.copy() for k, p in start.items()}
    opt1 = make_opt(first, clip_norm=clip_norm)
    run(first, opt1, range(5))
    saved = opt1.state_dict()
    resumed = {k: p.copy() for k, p in first.items()}
    opt2 = make_opt(resumed, clip_norm=clip_norm)
    opt2.load_state_dict(saved)
    run(resumed, opt2, range(5, 10))

    assert opt2.t == 10
    for k in straight:
        assert np.array_equal(straight[k], resumed[k]), k


def test_resume_fails_without_state():
    # Guard: the bit-for-bit test above is not vacuous, because a fresh Adam
    # (t = 0, m = v = 0) does *not* reproduce the uninterrupted run.
    rng = np.random.default_rng(12)
    start = make_params(rng)
    grads = [random_grads(rng, start) for _ in range(4)]
    a = {k: p.copy() for k, p in start.items()}
    opt = Adam(a, lr=0.01)
    for g in grads:
        opt.step(g)
    b = {k: p.copy() for k, p in start.items()}
    opt_b = Adam(b, lr=0.01)
    for g in grads[:2]:
        opt_b.step(g)
    opt_c = Adam(b, lr=0.01)  # "resumed" without loading state
    for g in grads[2:]:
        opt_c.step(g)
    assert not np.array_equal(a["enc.W"], b["enc.W"])


def test_state_dict_layout_and_json_safe_scalars():
    import json

    rng = np.random.default_rng(13)
    params = make_params(rng, dtype=np.float32)
    adam = Adam(params, lr=3e-4, clip_norm=2.0)
    adam.step(random_grads(rng, params))
    state = adam.state_dict()
    assert set(state["arrays"]) == {f"{b}.{k}" for b in ("m", "v") for k in params}
    assert json.loads(json.dumps(state["scalars"])) == state["scalars"]
    assert state["scalars"]["t"] == 1 and state["scalars"]["lr"] == 3e-4
    # Copies, not the live buffers.
    assert not np.shares_memory(state["arrays"]["m.enc.W"], adam.state["m"]["enc.W"])

    sgd_state = SGD(params, lr=0.1).state_dict()
    assert set(sgd_state["arrays"]) == {f"velocity.{k}" for k in params}


def test_load_state_dict_validates_and_copies_in_place():
    rng = np.random.default_rng(14)
    params = make_params(rng)
    opt = Adam(params, lr=0.01)
    opt.step(random_grads(rng, params))
    state = opt.state_dict()

    fresh = Adam({k: p.copy() for k, p in params.items()}, lr=0.5)
    m_buffer = fresh.state["m"]["enc.W"]
    fresh.load_state_dict(state)
    assert fresh.state["m"]["enc.W"] is m_buffer
    np.testing.assert_array_equal(m_buffer, state["arrays"]["m.enc.W"])
    assert fresh.lr == 0.01 and fresh.t == 1

    bad = {"arrays": dict(state["arrays"]), "scalars": state["scalars"]}
    del bad["arrays"]["v.enc.b"]
    bad["arrays"]["m.dec.W"] = np.zeros((2, 4))
    bad["arrays"]["m.enc.b"] = bad["arrays"]["m.enc.b"].astype(np.float32)
    bad["arrays"]["m.nope"] = np.zeros(1)
    with pytest.raises(ValueError) as info:
        fresh.load_state_dict(bad)
    message = str(info.value)
    for needle in ("v.enc.b", "m.dec.W", "(2, 4)", "m.enc.b", "float32", "m.nope"):
        assert needle in message, needle
    # Nothing was changed by the failed load.
    np.testing.assert_array_equal(m_buffer, state["arrays"]["m.enc.W"])

    with pytest.raises(ValueError, match="SGD"):
        SGD({k: p.copy() for k, p in params.items()}, lr=0.1).load_state_dict(state)
