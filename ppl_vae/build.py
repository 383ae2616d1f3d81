"""From a config to the objects that train: dataset, VAE, objective, β schedule, optimizer, device.

Names in a config meet the registries here (:data:`REGISTRIES`; the command line checks the names
alone earlier, before torch is imported, with :func:`ppl_vae.registry.check_name`): :func:`check`
refuses an unknown name or option before anything is built, and :func:`build` makes
everything a training run needs, in a fixed order (so a seed gives the same run)::

    setup = build(check(load_config("mnist")))
    svi = SVI(setup.vae.model, setup.vae.guide, setup.optimizer, loss=setup.objective)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pyro
import torch
from pyro.optim import PyroOptim
from torch import nn

from ppl_vae.config import Config, ModelConfig, ObjectiveConfig, OptimConfig, PartSpec, value_at
from ppl_vae.data import DATASETS, Dataset, evaluation_split, load_dataset
from ppl_vae.errors import ConfigError
from ppl_vae.models.vae import VAE
from ppl_vae.objectives import OBJECTIVES, SCHEDULES, Objective, Schedule
from ppl_vae.objectives.schedules import Constant
from ppl_vae.parts.likelihoods import LIKELIHOODS
from ppl_vae.parts.nets import NETS
from ppl_vae.parts.posteriors import POSTERIORS
from ppl_vae.parts.priors import PRIORS, EncoderPrior
from ppl_vae.registry import Registry
from ppl_vae.training.optimizers import SharedOptim

REGISTRIES: dict[str, Registry] = {
    "model.encoder": NETS,
    "model.decoder": NETS,
    "model.prior": PRIORS,
    "model.posterior": POSTERIORS,
    "model.likelihood": LIKELIHOODS,
    "objective.beta": SCHEDULES,
}
OPTIMIZERS = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad}


def check(config: Config) -> Config:
    """Check the dataset name and every part's name and options against its registry (converting
    option values to their annotated types), and build the objective and β schedule once so that
    their own checks run; return config. Parts that need the data's size are checked when
    :func:`build` makes them, still before any training."""
    DATASETS.get(config.data.name, "data.name")
    for key, registry in REGISTRIES.items():
        spec = value_at(config, key)
        spec.options = registry.check_options(spec.name, spec.options, key)
    objective = config.objective
    objective.options = OBJECTIVES.check_options(objective.name, objective.options, "objective")
    build_objective(objective)
    return config


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device(name)


def build_dataset(config: Config, device: torch.device) -> Dataset:
    """The config's dataset on ``device``; a batch larger than the training set is refused."""
    dataset = load_dataset(config.data.name, config.data.data_dir, device=device).subset(config.data.train_size)
    if config.data.batch_size > dataset.train.shape[0]:
        raise ConfigError(
            f"data.batch_size: {config.data.batch_size} is larger than the {dataset.train.shape[0]} "
            f"training examples of {dataset.name!r}; choose at most {dataset.train.shape[0]}."
        )
    return dataset


def build_vae(config: ModelConfig, data_dim: int, image_shape: tuple[int, int] | None = None) -> VAE:
    """Build a VAE from its config section for data of ``data_dim`` numbers per datapoint.

    Networks that take an ``image_shape`` option get the dataset's ``image_shape`` unless the config
    sets one; a prior defined through the encoder (VampPrior) is handed the VAE's encoder."""
    prior = PRIORS.build(config.prior, "model.prior", config.latent_dim)
    posterior = POSTERIORS.build(config.posterior, "model.posterior", config.latent_dim)
    likelihood = LIKELIHOODS.build(config.likelihood, "model.likelihood", data_dim)
    encoder = _build_net(config.encoder, "model.encoder", image_shape, data_dim, posterior.num_params)
    decoder = _build_net(config.decoder, "model.decoder", image_shape, config.latent_dim, likelihood.num_params)
    vae = VAE(encoder, decoder, prior, posterior, likelihood)
    if isinstance(prior, EncoderPrior):
        prior.use_encoder(vae.encode, data_dim)
    return vae


def _build_net(spec: PartSpec, key: str, image_shape: tuple[int, int] | None, *sizes: int) -> nn.Module:
    """Build a network, filling its ``image_shape`` option from the data if it has one and it is unset."""
    if image_shape is not None and "image_shape" in NETS.options(spec.name) and "image_shape" not in spec.options:
        spec = PartSpec(spec.name, {**spec.options, "image_shape": list(image_shape)})
    return NETS.build(spec, key, *sizes)


def check_support(vae: VAE, dataset: Dataset, key: str = "model.likelihood") -> None:
    """Refuse data outside the likelihood's support before training (not a NaN hours later)."""
    for split in ("train", "test"):
        if not bool(vae.likelihood.support.check(evaluation_split(dataset, split)).all()):
            raise ConfigError(
                f"{key}: {type(vae.likelihood).__name__} needs data in {vae.likelihood.support}, but the "
                f"{split} split of {dataset.name!r} has values outside it; choose a likelihood whose support fits."
            )


def build_schedule(spec: PartSpec) -> Schedule:
    """The β schedule of a config's ``objective.beta`` part."""
    return SCHEDULES.build(spec, "objective.beta")


def build_objective(config: ObjectiveConfig) -> Objective:
    """The objective a config's ``objective`` section names, with its options; an objective that
    weighs the KL itself (``supports_beta = False``) refuses a β schedule other than the constant 1."""
    objective = OBJECTIVES.build(PartSpec(config.name, config.options), "objective")
    schedule = build_schedule(config.beta)
    if not objective.supports_beta and not (isinstance(schedule, Constant) and schedule.value == 1.0):
        raise ConfigError(
            f"objective.beta: objective {config.name!r} sets the weight of the KL itself; leave beta at its "
            "default (constant 1) with it."
        )
    return objective


def build_optimizer(config: OptimConfig) -> PyroOptim:
    """The Pyro optimizer of a config's ``optim`` section: one torch optimizer for every parameter
    (:class:`~ppl_vae.training.optimizers.SharedOptim`, the updates of Pyro's per-parameter ones).
    With ``clip_norm``, each parameter tensor's gradient is clipped to that norm before the update."""
    clip_args = {"clip_norm": config.clip_norm} if config.clip_norm is not None else None
    return SharedOptim(OPTIMIZERS[config.name], {"lr": config.lr, "weight_decay": config.weight_decay}, clip_args)


@dataclass
class Setup:
    """Everything a training run is made of, built from one config."""

    config: Config
    device: torch.device
    dataset: Dataset
    vae: VAE
    objective: Objective
    schedule: Schedule
    optimizer: PyroOptim


def build(config: Config) -> Setup:
    """Build a run's objects from a checked config: the dataset on the device, then (after seeding
    Pyro and clearing its param store) the VAE, checked against the data's support, the objective
    (compiled with ``train.compile`` where it can be), the β schedule and the optimizer."""
    device = resolve_device(config.device)
    dataset = build_dataset(config, device)
    pyro.set_rng_seed(config.seed)
    pyro.clear_param_store()
    vae = build_vae(config.model, dataset.data_dim, dataset.image_shape).to(device)
    check_support(vae, dataset)
    objective = build_objective(config.objective)
    if config.train.compile and not objective.compile():
        warnings.warn(f"train.compile: objective {config.objective.name!r} has no compiled loss; it runs eagerly "
                      "(elbo, meanfield and iwae with the standard gradient have one).", RuntimeWarning, stacklevel=2)
    return Setup(config, device, dataset, vae, objective, build_schedule(config.objective.beta),
                 build_optimizer(config.optim))
