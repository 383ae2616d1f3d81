"""Run configuration: nested dataclasses read from YAML, dicts or ``--set key=value`` overrides.

Every value is checked before any training: an unknown key, a wrong type or an impossible value
raises :class:`~ppl_vae.errors.ConfigError` with the key path (``model.latent_dim``), the bad value
and what is allowed. Parts (networks, prior, posterior, likelihood, β schedule) are written either
as a bare name (``likelihood: bernoulli``) or as a mapping with options
(``likelihood: {name: gaussian, sigma: 0.1}``).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ppl_vae.errors import ConfigError
from ppl_vae.validation import check_type, suggest


@dataclass
class PartSpec:
    """A registered part chosen by name, with the keyword options its factory accepts."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> str | dict[str, Any]:
        return {"name": self.name, **self.options} if self.options else self.name


def part(name: str, **options: Any) -> PartSpec:
    return PartSpec(name, options)


@dataclass
class DataConfig:
    name: str = "digits"
    data_dir: str | None = None  # None: $PPL_VAE_DATA, else ~/.cache/ppl_vae
    batch_size: int = 100


@dataclass
class ModelConfig:
    latent_dim: int = 2
    encoder: PartSpec = field(default_factory=lambda: part("mlp", hidden_sizes=[200], activation="tanh"))
    decoder: PartSpec = field(default_factory=lambda: part("mlp", hidden_sizes=[200], activation="tanh"))
    prior: PartSpec = field(default_factory=lambda: part("normal"))
    posterior: PartSpec = field(default_factory=lambda: part("diagonal_normal"))
    likelihood: PartSpec = field(default_factory=lambda: part("bernoulli"))


@dataclass
class GecoConfig:
    """GECO (Taming VAEs): minimize KL + λ·C subject to C <= 0; see :class:`ppl_vae.geco.GECO`."""

    tolerance: float | None = None  # κ (required): RMS error per dimension, or nats per datapoint for nll
    constraint: str = "reconstruction_error"  # reconstruction_error: ||x - E[x|z]||² - D·κ²; nll: -log p(x|z) - κ
    alpha: float = 0.99  # moving average of the constraint
    rate: float = 1e-3  # ν in λ <- λ·exp(ν·C_ma)
    lambda_init: float = 1.0
    lambda_min: float = 1e-6
    lambda_max: float = 1e6
    warmup: int = 0  # steps before λ starts to move


@dataclass
class ObjectiveConfig:
    elbo: str = "trace"  # trace: Trace_ELBO (Monte Carlo KL); meanfield: TraceMeanField_ELBO (analytic KL)
    num_particles: int = 1
    beta: PartSpec = field(default_factory=lambda: part("constant", value=1.0))
    geco: GecoConfig | None = None  # a mapping turns the ELBO into GECO's constrained objective


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adagrad
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = None  # clip each parameter's gradient to this norm (Pyro's clip_args)


@dataclass
class TrainConfig:
    epochs: int = 10
    eval_every: int = 1  # test ELBO every N epochs (and at the last one)
    checkpoint_every: int = 1  # checkpoint every N epochs (and at the last one)
    eval_batch_size: int = 1000
    progress: bool = True  # tqdm progress bar


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "objective.elbo": ("trace", "meanfield"),
    "optim.name": ("adam", "adagrad"),
}
POSITIVE = ("model.latent_dim", "data.batch_size", "objective.num_particles", "optim.lr",
            "train.epochs", "train.eval_every", "train.checkpoint_every", "train.eval_batch_size")


def _part_from_yaml(value: Any, key: str) -> PartSpec:
    if isinstance(value, PartSpec):
        return value
    if isinstance(value, str):
        return PartSpec(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        options = {k: v for k, v in value.items() if k != "name"}
        return PartSpec(value["name"], options)
    raise ConfigError(f"{key}: expected a part name or a mapping with a 'name', got {value!r}.")


def _optional_dataclass(annotation: Any) -> Any:
    """``Section | None`` -> ``Section`` (a section that may be left out); other annotations as they are."""
    members = [m for m in typing.get_args(annotation) if m is not type(None)]
    return members[0] if len(members) == 1 and dataclasses.is_dataclass(members[0]) else annotation


def _from_dict(cls: type, values: Any, prefix: str) -> Any:
    if dataclasses.is_dataclass(values):
        values = to_dict(values)
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(
                f"{key}: unknown key.{suggest(str(name), fields)} Allowed keys here: {', '.join(fields)}."
            )
        annotation = _optional_dataclass(hints[name]) if value is not None else hints[name]
        if annotation is PartSpec:
            kwargs[name] = _part_from_yaml(value, key)
        elif dataclasses.is_dataclass(annotation):
            kwargs[name] = _from_dict(annotation, value, key)
        else:
            kwargs[name] = check_type(value, annotation, key)
    return cls(**kwargs)


def _get(config: Config, key: str) -> Any:
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def validate(config: Config) -> Config:
    """Check the values that no type can express, the dataset name and every part name and
    option; return config. Parts that need the data's size are built (and check their values) in
    :func:`~ppl_vae.train.fit`, still before any training."""
    from ppl_vae.data import DATASETS  # the registries import torch: only when validating
    from ppl_vae.objectives import build_schedule
    from ppl_vae.parts import REGISTRIES

    for key, allowed in CHOICES.items():
        if _get(config, key) not in allowed:
            value = _get(config, key)
            raise ConfigError(
                f"{key}: {value!r} is not allowed.{suggest(str(value), list(allowed))} "
                f"Choose one of: {', '.join(allowed)}."
            )
    for key in POSITIVE:
        if _get(config, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(config, key)!r}.")
    if config.optim.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay: must be >= 0, got {config.optim.weight_decay!r}.")
    if config.optim.clip_norm is not None and config.optim.clip_norm <= 0:
        raise ConfigError(f"optim.clip_norm: must be > 0 or null (no clipping), got {config.optim.clip_norm!r}.")
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed: must be in [0, 2**32 - 1] (NumPy's range), got {config.seed!r}.")
    DATASETS.get(config.data.name, "data.name")
    for key, registry in REGISTRIES.items():
        spec: PartSpec = _get(config, key)
        spec.options = registry.check_options(spec.name, spec.options, key)
    build_schedule(config.objective.beta)
    if config.objective.geco is not None:
        _validate_geco(config.objective)
    return config


def _validate_geco(objective: ObjectiveConfig) -> None:
    from ppl_vae.objectives import Constant, build_objective, build_schedule

    if objective.geco.tolerance is None:
        raise ConfigError("objective.geco.tolerance: GECO needs the tolerance κ of its constraint, e.g. "
                          "objective.geco.tolerance=0.1 (RMS reconstruction error per dimension).")
    schedule = build_schedule(objective.beta)
    if not (isinstance(schedule, Constant) and schedule.value == 1.0):
        raise ConfigError("objective.beta: GECO sets the weight of the KL against the constraint itself (through "
                          "λ); leave beta at its default (constant 1) when objective.geco is set.")
    build_objective(objective)  # the GECO constructor checks its own values


def from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a Config from a (possibly partial) nested dict; missing keys keep defaults."""
    return validate(_from_dict(Config, values or {}, ""))


def to_dict(config: Any) -> dict[str, Any]:
    """The plain nested dict of a Config (parts written as in YAML), ready for ``yaml.safe_dump``."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, PartSpec):
            out[f.name] = value.to_yaml()
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = value
    return out


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {override!r}: expected key.path=value, e.g. --set model.latent_dim=10.")
        *parents, leaf = key.split(".")
        target = values
        for depth, name in enumerate(parents):
            child = target.get(name)
            if isinstance(child, str):  # a part given by bare name gets options: {name: child}
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parents[: depth + 1])} is not a mapping.")
            target[name] = child
            target = child
        target[leaf] = yaml.safe_load(raw)
    return values


def shipped_configs() -> dict[str, Path]:
    """The YAML configs shipped inside the package, by name."""
    folder = resources.files("ppl_vae") / "configs"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def read_yaml(name_or_path: str | Path) -> dict[str, Any]:
    """The raw dict of a shipped config name (``mnist``) or of a YAML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        configs = shipped_configs()
        if str(name_or_path) not in configs:
            raise ConfigError(
                f"unknown config {str(name_or_path)!r}.{suggest(str(name_or_path), list(configs))} "
                f"Shipped configs: {', '.join(sorted(configs))} (or give a path to a .yaml file)."
            )
        path = configs[str(name_or_path)]
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level.")
    return values or {}


def load_config(name_or_path: str | Path = "default", overrides: list[str] | None = None) -> Config:
    """Read a shipped config or YAML file, apply ``--set`` overrides and validate the result."""
    return from_dict(apply_overrides(read_yaml(name_or_path), overrides or []))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
