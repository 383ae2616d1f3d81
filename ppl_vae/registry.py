"""Registries of named parts: the one place where a name in a config becomes a Python object."""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any, Callable, Generic, TypeVar

from ppl_vae.errors import ConfigError
from ppl_vae.validation import allocation_checked, check_type, suggest

T = TypeVar("T")


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
            where = f"{key}: " if key else ""
            raise ConfigError(
                f"{where}unknown {self.kind} {name!r}.{suggest(name, self.names())} "
                f"Registered {self.kind}s: {', '.join(self.names())}."
            )
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
