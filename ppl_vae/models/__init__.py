"""Models: Pyro ``model``/``guide`` pairs built from parts (the VAE, the conditional VAE)."""
