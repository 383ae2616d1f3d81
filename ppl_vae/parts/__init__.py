"""Parts of a VAE, each registered by name: networks, priors, posteriors (guide families) and
likelihoods. Adding one is one decorated class (or factory) in its module.

A part's options are its keyword-only arguments; their types and allowed ranges are their
annotations (``hidden_sizes: list[Size]``, ``sigma: Scale``, see :mod:`ppl_vae.validation`), which
the registry checks, naming the config key, before it builds the part. A part called directly from
Python trusts its arguments."""
