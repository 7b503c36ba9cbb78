"""numpyvae: Variational Autoencoders from scratch in NumPy.

Every gradient is written by hand, derived in docs/ and checked against finite
differences in tests/. The public API is described in README.md.

The top level is the book: layers, distributions, the VAE and its estimators, the
autoencoder, pPCA, gradient checking, optimisers, training, data, checkpoints. Measuring and
drawing live in the subpackage numpyvae.lab, which only uses the book's public API.
"""

__version__ = "0.1.0"

from .distributions import (  # noqa: F401
    bernoulli_log_likelihood, gaussian_log_likelihood, kl_diag_gaussian_standard,
    kl_diag_gaussians, kl_full_gaussians, log_mean_exp, log_normal_diag, reparameterize,
    reparameterize_backward,
)
from .layers import MLP, Identity, Linear, ReLU, Sigmoid, Softplus, Tanh  # noqa: F401
from .model import VAE  # noqa: F401
from .conditional import ConditionalVAE  # noqa: F401
from .discrete import DiscreteVAE  # noqa: F401
from .autoencoder import Autoencoder  # noqa: F401
from .optim import SGD, Adam, clip_grad_norm  # noqa: F401
from .data import Dataset, binarize, load_dataset, make_gaussian_mixture, make_sin_surface  # noqa: F401
from . import autoencoder, data, estimators, gradcheck, ppca  # noqa: F401
# numpyvae.lab is not imported here, so that `import numpyvae` loads no matplotlib; import its
# modules by name, e.g. `from numpyvae.lab import diagnostics`.
