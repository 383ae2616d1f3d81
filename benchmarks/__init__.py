"""Benchmarks of ppl_vae against a plain-PyTorch VAE: ``python -m benchmarks`` (see ``__main__``)."""
