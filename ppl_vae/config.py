"""The schema of a run's configuration: nested dataclasses read from YAML, dicts or ``--set key=value``.

This module only describes and checks the shape of a config: an unknown key, a wrong type or an
impossible value raises :class:`~ppl_vae.errors.ConfigError` with the key path (``model.latent_dim``),
the bad value and what is allowed. Parts (networks, prior, posterior, likelihood, objective, β
schedule) are written either as a bare name (``likelihood: bernoulli``) or as a mapping with options
(``likelihood: {name: gaussian, sigma: 0.1}``); whether a name and its options exist is checked by
:func:`ppl_vae.build.check`, which knows the registries, before anything is built (the command line
checks the names earlier, before torch is imported: :func:`ppl_vae.registry.check_name`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import yaml

from ppl_vae.errors import ConfigError
from ppl_vae.validation import Bounds, Count, NonNegative, Positive, Size, check_type, suggest

Seed = Annotated[int, Bounds(0, 2**32 - 1, note="NumPy's seed range, below 2**32")]


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
    batch_size: Size = 100
    train_size: Size | None = None  # train on the first N training examples; null: all of them


@dataclass
class ModelConfig:
    latent_dim: Size = 2
    encoder: PartSpec = field(default_factory=lambda: part("mlp", hidden_sizes=[200], activation="tanh"))
    decoder: PartSpec = field(default_factory=lambda: part("mlp", hidden_sizes=[200], activation="tanh"))
    prior: PartSpec = field(default_factory=lambda: part("normal"))
    posterior: PartSpec = field(default_factory=lambda: part("diagonal_normal"))
    likelihood: PartSpec = field(default_factory=lambda: part("bernoulli"))


@dataclass
class ObjectiveConfig:
    """The training objective, a registered part (``name`` and its ``options``), and the β schedule.

    In YAML the options sit beside the name: ``objective: {name: iwae, num_particles: 5}``."""

    name: str = "elbo"  # elbo: Trace_ELBO; meanfield: TraceMeanField_ELBO; iwae; geco ('ppl-vae parts')
    options: dict[str, Any] = field(default_factory=dict)
    beta: PartSpec = field(default_factory=lambda: part("constant", value=1.0))

    def to_yaml(self) -> dict[str, Any]:
        return {"name": self.name, **self.options, "beta": self.beta.to_yaml()}


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adagrad
    lr: Positive = 1e-3
    weight_decay: NonNegative = 0.0
    clip_norm: Positive | None = None  # clip each parameter's gradient to this norm (Pyro's clip_args)


@dataclass
class TrainConfig:
    epochs: Count = 10
    eval_every: Count = 1  # test ELBO every N epochs (and at the last one)
    checkpoint_every: Count = 1  # checkpoint every N epochs (and at the last one)
    eval_batch_size: Count = 1000
    progress: bool = True  # tqdm progress bar
    # importance samples K for a test log p(x) at the end of training; null: none
    log_likelihood_samples: Size | None = None
    # run the objective's loss as TorchScript graphs (elbo, meanfield, iwae); others, or a failed trace, run eagerly with a warning
    compile: bool = False


@dataclass
class Config:
    seed: Seed = 0
    device: str = "auto"  # auto | cpu | cuda
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "optim.name": ("adam", "adagrad"),
}


def _part_from_yaml(value: Any, key: str) -> PartSpec:
    if isinstance(value, PartSpec):
        return value
    if isinstance(value, str):
        return PartSpec(value)
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        options = {k: v for k, v in value.items() if k != "name"}
        return PartSpec(value["name"], options)
    raise ConfigError(f"{key}: expected a part name or a mapping with a 'name', got {value!r}.")


def _objective_from_yaml(value: Any, key: str) -> ObjectiveConfig:
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected an objective name or a mapping with a 'name', got {value!r}.")
    if "elbo" in value or "geco" in value:
        raise ConfigError(f"{key}: objectives are now chosen by name; write {key}: {_new_spelling(value)}")
    options = {name: option for name, option in value.items() if name not in ("name", "beta")}
    objective = ObjectiveConfig(name=value.get("name", "elbo"), options=options)
    if not isinstance(objective.name, str):
        raise ConfigError(f"{key}.name: expected an objective name, got {objective.name!r}.")
    if "beta" in value:
        objective.beta = _part_from_yaml(value["beta"], f"{key}.beta")
    return objective


def _new_spelling(old: dict[str, Any]) -> str:
    """The objective section of an old config (``elbo: trace|meanfield``, ``geco: {...}``) in the new
    spelling, for the error message."""
    estimator = "meanfield" if old.get("elbo") == "meanfield" else "elbo"
    new: dict[str, Any] = {"name": estimator}
    if isinstance(old.get("geco"), dict):
        new = {"name": "geco", **old["geco"], **({"wraps": estimator} if estimator != "elbo" else {})}
    new.update({name: value for name, value in old.items() if name not in ("elbo", "geco")})
    return yaml.safe_dump(new, default_flow_style=True, sort_keys=False).strip()


def _optional_dataclass(annotation: Any) -> Any:
    """``Section | None`` -> ``Section`` (a section that may be left out); other annotations as they are."""
    members = [m for m in typing.get_args(annotation) if m is not type(None)]
    return members[0] if len(members) == 1 and dataclasses.is_dataclass(members[0]) else annotation


def _from_dict(cls: type, values: Any, prefix: str) -> Any:
    if dataclasses.is_dataclass(values):
        values = to_dict(values)
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls, include_extras=True)
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
        elif annotation is ObjectiveConfig:
            kwargs[name] = _objective_from_yaml(value, key)
        elif dataclasses.is_dataclass(annotation):
            kwargs[name] = _from_dict(annotation, value, key)
        else:
            kwargs[name] = check_type(value, annotation, key)
    return cls(**kwargs)


def value_at(config: Config, key: str) -> Any:
    """The value at a dotted key path (``model.prior``) of a config."""
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def validate(config: Config) -> Config:
    """Check the choices that the annotations do not express; return config. Types and ranges are
    checked from the fields' annotations (``Size``, ``Positive``...) as the values are read; part names
    and options against their registries by :func:`ppl_vae.build.check`."""
    for key, allowed in CHOICES.items():
        if value_at(config, key) not in allowed:
            value = value_at(config, key)
            raise ConfigError(
                f"{key}: {value!r} is not allowed.{suggest(str(value), list(allowed))} "
                f"Choose one of: {', '.join(allowed)}."
            )
    return config


MAX_DEPTH = 20
"""How deeply lists and mappings may nest in a config (a real one nests 3 levels)."""


def _check_nesting(values: Any) -> None:
    """Refuse a value that contains itself (a YAML anchor used inside itself, ``&a [*a]``) or that
    nests deeper than :data:`MAX_DEPTH`, naming its key; walked without recursion."""
    stack: list[tuple[Any, str, tuple[int, ...]]] = [(values, "", ())]
    while stack:
        value, key, ancestors = stack.pop()
        if not isinstance(value, (dict, list, tuple)):
            continue
        where = key or "config"
        if id(value) in ancestors:
            raise ConfigError(f"{where}: contains itself (a YAML alias inside its own anchor); write the value out.")
        if len(ancestors) >= MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; a config needs a few.")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for name, item in items:
            child = f"{key}.{name}" if isinstance(value, dict) else f"{key}[{name}]"
            stack.append((item, child.lstrip("."), (*ancestors, id(value))))


def from_dict(values: dict[str, Any]) -> Config:
    """Read and validate a Config from a (possibly partial) nested dict; missing keys keep defaults."""
    _check_nesting(values)
    return validate(_from_dict(Config, values or {}, ""))


def to_dict(config: Any) -> dict[str, Any]:
    """The plain nested dict of a Config (parts written as in YAML), ready for ``yaml.safe_dump``."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, (PartSpec, ObjectiveConfig)):
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
        target[leaf] = _parse_yaml(raw, f"--set {key}", "write the value as YAML (a number, a word, [1, 2], {name: x}; "
                                                  "quote a string with special characters; no !! tags)")
    return values


def _parse_yaml(text: str, where: str, fix: str) -> Any:
    """``text`` parsed as YAML (safe tags only), or a ConfigError naming ``where`` with the parser's
    reason and ``fix``: how to write it."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())  # the parser's message, on one line
        raise ConfigError(f"{where}: not valid YAML ({reason}); {fix}.") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read as YAML; a config is a few levels of "
                          "mappings and short lists.") from None


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
    values = _parse_yaml(_read_text(path), f"config file {str(path)!r}",
                         "fix the line the parser points at (plain YAML: no !! tags)")
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r}: expected a mapping at the top level.")
    return values or {}


def _read_text(path: Path) -> str:
    """The UTF-8 text of a config file, or a ConfigError naming it and saying what is wrong."""
    where = f"config file {str(path)!r}"
    try:
        if path.is_dir():
            raise ConfigError(f"{where} is a folder, not a file; give the path of a .yaml file.")
        if not path.exists():
            raise ConfigError(f"{where} does not exist; check the path (or give a shipped config's name).")
        if not path.is_file():
            raise ConfigError(f"{where} is not a regular file (a device or a pipe?); give the path of a .yaml file.")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{where} is not UTF-8 text (byte {error.start} is {error.object[error.start:error.start + 1]!r}); "
            "save it as UTF-8 (a YAML file, not a binary or UTF-16 one)."
        ) from None
    except OSError as error:
        raise ConfigError(f"{where} cannot be read ({error.strerror or error}); check the path and the file's "
                          "permissions.") from None


def load_config(name_or_path: str | Path = "default", overrides: list[str] | None = None) -> Config:
    """Read a shipped config or YAML file, apply ``--set`` overrides and validate the result."""
    return from_dict(apply_overrides(read_yaml(name_or_path), overrides or []))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
