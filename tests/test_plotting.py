"""Plotting: the arithmetic behind the figures (image tiling, the manifold's grid of codes,
PCA) against values known by construction, every figure written as a valid PNG with no
temporary file left behind, and clear errors for bad input."""

import os

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.stats import norm

import numpyvae as nv
from numpyvae.lab import plotting as P

D = 784


@pytest.fixture(scope="module")
def model2():
    return nv.VAE(input_dim=D, hidden_dims=(16,), latent_dim=2, seed=0, activation="tanh")


@pytest.fixture(scope="module")
def model5():
    return nv.VAE(input_dim=D, hidden_dims=(16,), latent_dim=5, seed=0, activation="tanh")


@pytest.fixture
def images():
    return np.random.default_rng(0).random((30, D))


def make_history(n_epochs, beta=None):
    epochs = list(range(1, n_epochs + 1))
    h = {"epoch": epochs,
         "train_rec": [-200.0 + 10 * e for e in epochs], "test_rec": [-205.0 + 9 * e for e in epochs],
         "train_kl": [5.0 + e for e in epochs], "test_kl": [5.5 + e for e in epochs]}
    h["train_elbo"] = [r - k for r, k in zip(h["train_rec"], h["train_kl"])]
    h["test_elbo"] = [r - k for r, k in zip(h["test_rec"], h["test_kl"])]
    if beta is not None:
        h["beta"] = beta
    return h


def assert_png(path, min_size=100):
    """path holds a complete PNG of at least min_size pixels each way, alone in its folder
    except for other finished figures (no temporary files)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= min_size and img.shape[1] >= min_size, img.shape
    leftovers = [f for f in os.listdir(os.path.dirname(path)) if not f.endswith(".png")]
    assert leftovers == [], leftovers
    return img


# ----------------------------------------------------------------- image_grid

def test_image_grid_puts_image_k_in_row_k_div_nrow_column_k_mod_nrow():
    H, W, pad, fill = 3, 2, 1, -1.0
    imgs = np.stack([np.full(H * W, 10.0 * (k + 1)) for k in range(5)])
    grid = P.image_grid(imgs, nrow=3, image_shape=(H, W), pad=pad, pad_value=fill)
    assert grid.shape == (2 * (H + pad) + pad, 3 * (W + pad) + pad)

    is_tile = np.zeros(grid.shape, dtype=bool)
    for k in range(5):
        top, left = pad + (k // 3) * (H + pad), pad + (k % 3) * (W + pad)
        np.testing.assert_array_equal(grid[top:top + H, left:left + W], 10.0 * (k + 1))
        is_tile[top:top + H, left:left + W] = True
    # Padding between and around the tiles, and the unused sixth tile, hold the pad value.
    np.testing.assert_array_equal(grid[~is_tile], fill)


def test_image_grid_can_mark_the_unused_tiles_of_a_partial_row():
    # 3 tiles of 1 x 1 pixel, 2 per row: the fourth tile and the border after it are empty.
    grid = P.image_grid(np.array([[1.0], [2.0], [3.0]]), nrow=2, image_shape=(1, 1), pad=1,
                        pad_value=0.0, empty_value=-1.0)
    np.testing.assert_array_equal(grid, [[0, 0, 0, 0, 0],
                                         [0, 1, 0, 2, 0],
                                         [0, 0, 0, 0, 0],
                                         [0, 3, 0, -1, -1],
                                         [0, 0, 0, -1, -1]])


def test_image_grid_keeps_each_image_upright_and_unflipped():
    # A non-square image with distinct pixels: a transposed or flipped tile would differ.
    H, W = 2, 3
    img = np.arange(H * W, dtype=float)
    grid = P.image_grid(img[None, :], nrow=4, image_shape=(H, W), pad=0)
    np.testing.assert_array_equal(grid, [[0, 1, 2], [3, 4, 5]])   # row-major, like MNIST


def test_image_grid_narrows_to_the_number_of_images():
    grid = P.image_grid(np.ones((2, 4)), nrow=5, image_shape=(2, 2), pad=1)
    assert grid.shape == (1 * 3 + 1, 2 * 3 + 1)


def test_image_grid_rejects_a_width_that_is_not_h_times_w():
    with pytest.raises(ValueError, match="H\\*W = 784"):
        P.image_grid(np.zeros((3, 780)), nrow=2)
    with pytest.raises(ValueError, match="2-D"):
        P.image_grid(np.zeros(784), nrow=2)


# ----------------------------------------------------------------- manifold_codes

def test_manifold_codes_are_gaussian_quantiles_with_z2_decreasing_down_the_rows():
    n = 4
    values = norm.ppf(np.linspace(0.05, 0.95, n))
    np.testing.assert_allclose(values[[0, -1]], [-1.6448536, 1.6448536], atol=1e-6)
    codes = P.manifold_codes(n)
    assert codes.shape == (n * n, 2)
    as_grid = codes.reshape(n, n, 2)                        # [row, column, coordinate]
    for r in range(n):
        np.testing.assert_allclose(as_grid[r, :, 0], values)         # z1 grows to the right
        np.testing.assert_allclose(as_grid[r, :, 1], values[::-1][r])  # z2 constant along a row
    z2_by_row = as_grid[:, 0, 1]
    assert z2_by_row[0] == values.max()                     # top row has the largest z2
    assert np.all(np.diff(z2_by_row) < 0)


def test_manifold_codes_rejects_a_one_point_grid():
    with pytest.raises(ValueError):
        P.manifold_codes(1)


# ----------------------------------------------------------------- pca_2d

def test_pca_2d_finds_the_axes_of_a_box_of_known_shape():
    # The 8 corners of a box with half-sides 3, 1, 0.5 along a random orthonormal basis,
    # shifted away from the origin: its principal axes are the basis vectors, exactly.
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    sides = np.array([3.0, 1.0, 0.5])
    corners = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]) * sides
    x = corners @ basis.T + np.array([5.0, -2.0, 7.0])

    projection, ratio = P.pca_2d(x)
    np.testing.assert_allclose(ratio, sides[:2] ** 2 / np.sum(sides ** 2), rtol=1e-12)
    for i in range(2):
        along = (x - x.mean(axis=0)) @ basis[:, i]          # coordinates on the known axis
        sign = np.sign(projection[0, i] * along[0])
        np.testing.assert_allclose(projection[:, i], sign * along, atol=1e-12)


def test_pca_2d_matches_the_eigendecomposition_of_the_covariance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 5)) * np.array([4.0, 2.0, 1.0, 0.5, 0.1]) @ np.linalg.qr(
        rng.standard_normal((5, 5)))[0]
    projection, ratio = P.pca_2d(x)

    eigval, eigvec = np.linalg.eigh(np.cov(x, rowvar=False))   # ascending order
    np.testing.assert_allclose(ratio, eigval[::-1][:2] / eigval.sum(), rtol=1e-10)
    xc = x - x.mean(axis=0)
    for i in range(2):
        expected = xc @ eigvec[:, -1 - i]
        assert np.allclose(projection[:, i], expected, atol=1e-9) or \
            np.allclose(projection[:, i], -expected, atol=1e-9)


def test_pca_2d_rejects_data_without_two_axes():
    with pytest.raises(ValueError):
        P.pca_2d(np.zeros((10, 1)))
    with pytest.raises(ValueError, match="zero variance"):
        P.pca_2d(np.ones((10, 3)))


# ----------------------------------------------------------------- each figure is a PNG

def figure_cases(model2, images):
    """Figures and variants that write_all_figures (tested below, which checks every PNG
    it writes) does not draw: each plot function is exercised by one or the other."""
    return {
        "grid": lambda p: P.plot_image_grid(images, p, nrow=6, title="some images"),
        "curves_beta": lambda p: P.plot_training_curves(make_history(3, beta=[0.0, 0.5, 1.0]), p),
        "reconstructions_many": lambda p: P.plot_reconstructions(images, images, p, n=25),
        "latent_unlabelled": lambda p: P.plot_latent_scatter(model2.encode(images)[0], None, p),
    }


@pytest.mark.parametrize("case", ["grid", "curves_beta", "reconstructions_many", "latent_unlabelled"])
def test_each_figure_is_a_complete_png_in_a_new_folder(case, model2, images, tmp_path):
    path = str(tmp_path / "new" / "folder" / f"{case}.png")
    written = figure_cases(model2, images)[case](path)
    assert written == path
    assert os.listdir(tmp_path / "new" / "folder") == [f"{case}.png"]
    img = assert_png(path)
    if case == "curves_beta":           # a changing beta gets a fourth panel: 16.5 inches wide
        assert img.shape[1] > 15 * P.DPI


def test_samples_are_reproducible_from_the_generator(model2, tmp_path):
    paths = [P.plot_samples(model2, str(tmp_path / f"s{i}.png"), np.random.default_rng(seed), n=9)
             for i, seed in enumerate([7, 7, 8])]
    data = [open(p, "rb").read() for p in paths]
    assert data[0] == data[1] and data[0] != data[2]


def test_a_failed_render_leaves_the_old_file_and_no_temporary(images, tmp_path):
    path = tmp_path / "fig.xyz"
    path.write_bytes(b"old")
    with pytest.raises(ValueError):
        P.plot_image_grid(images, str(path), nrow=5)          # matplotlib knows no ".xyz" format
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["fig.xyz"]


# ----------------------------------------------------------------- write_all_figures

def test_write_all_figures_for_a_2d_latent_space(model2, images, tmp_path):
    labels = np.arange(len(images)) % 10
    state = np.random.get_state()[1].copy()
    paths = P.write_all_figures(model2, images, labels, make_history(2), str(tmp_path / "out"),
                                np.random.default_rng(0))
    expected = {"curves", "reconstructions", "samples", "interpolation", "latent", "manifold"}
    assert set(paths) == expected
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"{k}.png" for k in expected)
    for name, path in paths.items():
        assert path == str(tmp_path / "out" / f"{name}.png")
        img = assert_png(path)
        if name in ("curves", "interpolation"):
            assert img.shape[1] > 2 * img.shape[0]           # panels side by side
    np.testing.assert_array_equal(np.random.get_state()[1], state)   # global RNG untouched


def test_write_all_figures_for_a_5d_latent_space(model5, images, tmp_path):
    paths = P.write_all_figures(model5, images, np.arange(len(images)) % 10, make_history(1),
                                tmp_path, np.random.default_rng(0))
    expected = {"curves", "reconstructions", "samples", "interpolation", "latent_pca"}
    assert set(paths) == expected
    assert sorted(os.listdir(tmp_path)) == sorted(f"{k}.png" for k in expected)
    for path in paths.values():
        assert_png(path)


def test_write_all_figures_without_images_or_history(tmp_path):
    model = nv.VAE(input_dim=3, hidden_dims=(4,), latent_dim=2, likelihood="gaussian", seed=0, activation="tanh")
    x = np.random.default_rng(0).standard_normal((50, 3))
    empty = {k: [] for k in P.HISTORY_KEYS}
    paths = P.write_all_figures(model, x, None, empty, tmp_path, np.random.default_rng(0),
                                image_shape=None)
    assert set(paths) == {"latent"}
    assert os.listdir(tmp_path) == ["latent.png"]


def test_interpolation_prefers_a_3_and_an_8_then_two_different_labels():
    pair = P._interpolation_pair
    assert pair(np.array([1, 8, 3, 3, 8]), 5) == (2, 1)
    assert pair(np.array([1, 1, 4, 1]), 4) == (0, 2)
    assert pair(np.array([5, 5]), 2) == (0, 1)
    assert pair(None, 3) == (0, 1)


# ----------------------------------------------------------------- clear errors

def test_manifold_needs_a_2d_latent_space(images, tmp_path):
    model3 = nv.VAE(input_dim=D, hidden_dims=(16,), latent_dim=3, seed=0, activation="tanh")
    with pytest.raises(ValueError, match="latent_dim == 2"):
        P.plot_manifold(model3, str(tmp_path / "m.png"))
    assert os.listdir(tmp_path) == []


def test_latent_plots_need_one_label_per_point(model2, images, tmp_path):
    mu, _ = model2.encode(images)
    with pytest.raises(ValueError, match="one label per row"):
        P.plot_latent_scatter(mu, np.zeros(len(mu) - 1, dtype=int), str(tmp_path / "l.png"))
    with pytest.raises(ValueError, match="one label per row"):
        P.plot_latent_pca(np.ones((4, 5)) * np.arange(5), [0, 1, 2], str(tmp_path / "l.png"))
    with pytest.raises(ValueError, match="integers"):
        P.plot_latent_scatter(mu, np.full(len(mu), 0.5), str(tmp_path / "l.png"))
    with pytest.raises(ValueError, match="2 columns"):
        P.plot_latent_scatter(np.zeros((4, 3)), None, str(tmp_path / "l.png"))


def test_image_figures_reject_a_wrong_image_width(model2, images, tmp_path):
    with pytest.raises(ValueError, match="H\\*W"):
        P.plot_image_grid(images[:, :700], str(tmp_path / "g.png"), nrow=5)
    with pytest.raises(ValueError, match="H\\*W"):
        P.plot_reconstructions(images, images[:, :700], str(tmp_path / "r.png"))
    with pytest.raises(ValueError, match="input_dim = 784"):
        P.plot_samples(model2, str(tmp_path / "s.png"), np.random.default_rng(0), image_shape=(20, 20))
    with pytest.raises(ValueError, match="shape \\(784,\\)"):
        P.plot_interpolation(model2, images[:2], images[2], str(tmp_path / "i.png"))


def test_training_curves_reject_a_malformed_history(tmp_path):
    history = make_history(3)
    del history["test_kl"]
    with pytest.raises(ValueError, match="test_kl"):
        P.plot_training_curves(history, str(tmp_path / "c.png"))
    history = make_history(3)
    history["train_elbo"] = history["train_elbo"][:2]
    with pytest.raises(ValueError, match="equal length"):
        P.plot_training_curves(history, str(tmp_path / "c.png"))


def test_write_all_figures_checks_labels_before_writing_anything(model2, images, tmp_path):
    with pytest.raises(ValueError, match="one label per row"):
        P.write_all_figures(model2, images, np.zeros(3, dtype=int), make_history(2), tmp_path,
                            np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        P.write_all_figures(model2, images, None, None, tmp_path, rng=0)
    assert os.listdir(tmp_path) == []


def test_import_numpyvae_loads_no_matplotlib():
    # The book does not draw: only numpyvae.lab's drawing modules import matplotlib.
    import subprocess
    import sys
    code = "import sys, numpyvae; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
