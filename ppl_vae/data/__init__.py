"""Data: the dataset registry (:mod:`~ppl_vae.data.datasets`), dataset files with their checks and
downloads (:mod:`~ppl_vae.data.files`) and minibatches (:mod:`~ppl_vae.data.batching`)."""

from ppl_vae.data.batching import batches, sample_binary
from ppl_vae.data.datasets import DATASETS, Dataset, check_dataset, evaluation_split, load_dataset, load_digits
from ppl_vae.data.files import data_dir

__all__ = ["DATASETS", "Dataset", "batches", "check_dataset", "data_dir", "evaluation_split", "load_dataset", "load_digits",
           "sample_binary"]
