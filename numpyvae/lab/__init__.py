"""The lab: measuring and drawing the models of the book.

The package's top level is the book: the layers, the distributions, the VAE and its
estimators, the autoencoder, pPCA, training. Everything here *uses* those models and adds
nothing to them; it is built only on their public methods (``encode``, ``decode``,
``log_p_x_given_z``, ``loss_and_grads``, ...) and on the public functions of its own
modules, so a reader of the book can skip it and a change here never changes a number there.

    diagnostics     what a trained VAE uses: KL per latent dimension, active units, a naive
                    log p(x) by prior sampling; encoding a whole data set in batches
    variance        how noisy a gradient estimator is: R draws, their variance and SNR
    estimator_lab   every estimator measured and trained side by side (``numpyvae estimators``)
    discrete_lab    each discrete-code estimator against exact enumeration, and trained (``numpyvae discrete``)
    autoencoders    training and measuring autoencoders against a VAE (``numpyvae autoencoders``)
    plotting        the figures, and the few drawing helpers the other modules share

Nothing is imported here: ``import numpyvae`` stays light, and matplotlib is loaded only by
the modules that draw (``plotting``, and ``estimator_lab`` and ``autoencoders``, which use it).
Import a module by name: ``from numpyvae.lab import diagnostics``.
"""
