"""ppl_vae: variational autoencoders as Pyro model/guide functions, trained with Pyro's SVI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ppl-vae")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
