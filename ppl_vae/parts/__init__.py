"""Parts of a VAE, each registered by name: networks, priors, posteriors (guide families) and
likelihoods. Adding one is one decorated class (or factory) in its module."""
