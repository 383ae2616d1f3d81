"""Registries of named parts: the one place where a name in a config becomes a Python object.

The modules that register parts import torch and Pyro, which takes seconds; the command line checks
a config's part names before that (:func:`check_name`), against the names the package's own modules
register: the string of every ``@REGISTRY.register("name")`` decorator in their source, read with
:mod:`ast` in milliseconds (:func:`source_index`). Once a registry's module is imported, parts may
have been registered from Python (a notebook, a test), so the live registry answers instead: a name
registered there is never refused.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from ppl_vae.errors import ConfigError
from ppl_vae.validation import allocation_checked, check_type, suggest

T = TypeVar("T")


def unknown_name(kind: str, name: str, names: list[str], key: str | None = None) -> ConfigError:
    """The error for ``name``, which is none of the ``names`` registered as parts of ``kind``: it
    names the config ``key`` (if given), the closest registered name and all of them."""
    where = f"{key}: " if key else ""
    return ConfigError(f"{where}unknown {kind} {name!r}.{suggest(name, names)} "
                       f"Registered {kind}s: {', '.join(names)}.")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of part.

    >>> likelihoods = Registry("likelihood")
    >>> @likelihoods.register("bernoulli")
    ... class Bernoulli: ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name`` (re-registering replaces it)."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str, key: str | None = None) -> Callable[..., T]:
        """The factory registered as ``name``; a ConfigError naming ``key`` and the choices if none."""
        if name not in self._factories:
            raise unknown_name(self.kind, name, self.names(), key)
        return self._factories[name]

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword options a part accepts, from its signature (positional inputs excluded)."""
        signature = inspect.signature(self.get(name))
        return {
            option: parameter
            for option, parameter in signature.parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        }

    def check_options(self, name: str, options: dict[str, Any], key: str) -> dict[str, Any]:
        """Check a part's options against its signature; return them converted to the annotated
        types. A ConfigError names ``key.option`` for an unknown, missing or mistyped option, or one
        outside the range its annotation allows (``Annotated[int, Bounds(1)]``, see
        :mod:`ppl_vae.validation`)."""
        factory = self.get(name, key)
        accepted = self.options(name)
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory, include_extras=True)
        checked = {}
        for option, value in options.items():
            if option not in accepted:
                raise ConfigError(
                    f"{key}.{option}: {self.kind} {name!r} has no option {option!r}."
                    f"{suggest(str(option), list(accepted))} "
                    f"Its options: {', '.join(accepted) or 'none'}."
                )
            checked[option] = check_type(value, hints.get(option, Any), f"{key}.{option}")
        for option, parameter in accepted.items():
            if parameter.default is inspect.Parameter.empty and option not in options:
                raise ConfigError(f"{key}.{option}: {self.kind} {name!r} needs this option.")
        return checked

    def build(self, spec: Any, key: str, *inputs: Any) -> T:
        """Call the factory of a config part (``spec.name`` with ``spec.options``, checked by
        :meth:`check_options`) on ``inputs``. A ConfigError raised by the factory gets ``key``
        prefixed so it names the config entry; a failure to allocate memory while building becomes
        a ConfigError naming ``key`` ("too large to allocate")."""
        options = self.check_options(spec.name, spec.options, key)
        try:
            with allocation_checked(key):
                return self.get(spec.name, key)(*inputs, **options)
        except ConfigError as error:
            if str(error).startswith(f"{key}:"):
                raise
            about_an_option = re.match(r"\w+(\[\d+\])?: ", str(error))  # "sigma: must be > 0 ..."
            raise ConfigError(f"{key}{'.' if about_an_option else ': '}{error}") from None


@dataclass(frozen=True)
class RegisteredNames:
    """The ``names`` (sorted) held by the registry of parts of ``kind`` that is ``variable`` in ``module``."""

    module: str
    variable: str
    kind: str
    names: tuple[str, ...]


@cache
def source_index() -> dict[str, RegisteredNames]:
    """Every registry the package defines at the top of a module (``NAME = Registry("kind")``), by
    its variable's name, with the names registered in it by decorators of the package's top-level
    functions and classes; read from the source, nothing is imported."""
    package = Path(__file__).parent
    defined: dict[str, tuple[str, str]] = {}
    registered: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "Registry(" not in source and ".register(" not in source:
            continue  # most modules: not worth parsing
        parts = path.relative_to(package.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for statement in ast.parse(source, str(path)).body:
            if isinstance(statement, (ast.Assign, ast.AnnAssign)):
                target = statement.targets[0] if isinstance(statement, ast.Assign) else statement.target
                call = _string_call(statement.value)
                if call and call[0] == "Registry" and isinstance(target, ast.Name):
                    defined[target.id] = (module, call[1])
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                for callee, name in filter(None, map(_string_call, statement.decorator_list)):
                    variable, _, method = callee.rpartition(".")
                    if method == "register":
                        registered.setdefault(variable, set()).add(name)
    return {variable: RegisteredNames(module, variable, kind, tuple(sorted(registered.get(variable, ()))))
            for variable, (module, kind) in defined.items()}


def _string_call(node: ast.AST | None) -> tuple[str, str] | None:
    """``(callee, text)`` for a call ``callee("text")`` (the callee as written: ``Registry``,
    ``PRIORS.register``); None for any other node."""
    if (isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return ast.unparse(node.func), node.args[0].value
    return None


def registered_names(variable: str) -> RegisteredNames:
    """The names registry ``variable`` holds: the live registry's once its module is imported (with
    the parts registered from Python), else the ones the package's source registers, without importing it."""
    static = source_index()[variable]
    module = sys.modules.get(static.module)
    if module is None:
        return static
    registry = getattr(module, variable)
    return RegisteredNames(static.module, variable, registry.kind, tuple(registry.names()))


def check_name(variable: str, name: str, key: str | None = None) -> None:
    """Refuse a ``name`` that registry ``variable`` does not hold with the ConfigError of
    :meth:`Registry.get`, naming ``key``; the registry's module is not imported."""
    registry = registered_names(variable)
    if name not in registry.names:
        raise unknown_name(registry.kind, name, list(registry.names), key)
