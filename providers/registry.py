"""Providers by name, imported lazily (Harbor's factory pattern): a vendor SDK costs
nothing until its provider is asked for, and a missing extra gets a message naming it.
Third-party packages add providers through the entry-point group `hud_ray.providers`."""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from typing import Any

from .base import Provider
from .errors import ProviderConfigError

ENTRY_POINT_GROUP = "hud_ray.providers"

# name → (module, class name, pip extra that brings its SDK or None)
BUILTIN: dict[str, tuple[str, str, str | None]] = {
    "local": ("providers.local", "LocalProvider", None),
    "attach": ("providers.attach", "AttachProvider", None),
    "sim": ("providers.sim", "SimProvider", None),
    "docker": ("providers.docker", "DockerProvider", "docker"),
    "modal": ("providers.modal", "ModalProvider", "modal"),
    "daytona": ("providers.daytona", "DaytonaProvider", "daytona"),
}


def available() -> list[str]:
    names = set(BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def installed() -> list[str]:
    """Providers whose module is present (their SDKs may still be missing)."""
    return [n for n in available()
            if n not in BUILTIN or importlib.util.find_spec(BUILTIN[n][0]) is not None]


def provider_class(name: str) -> type[Provider]:
    if name in BUILTIN:
        module_name, class_name, extra = BUILTIN[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if getattr(exc, "name", None) == module_name:
                raise ProviderConfigError(
                    f"provider {name!r} is not part of this install ({module_name} is missing); "
                    f"available: {', '.join(installed())}"
                ) from None
            if extra is None:
                raise ProviderConfigError(f"provider {name!r} cannot be loaded: {exc}") from None
            raise ProviderConfigError(
                f"provider {name!r} needs the [{extra}] extra: pip install 'hud-ray[{extra}]' "
                f"({exc})"
            ) from None
        return getattr(module, class_name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep.load()
    raise ProviderConfigError(
        f"unknown provider {name!r}; available: {', '.join(available())}"
    )


def get_provider(name: str, **options: Any) -> Provider:
    """Instantiate provider `name` with validated options."""
    return provider_class(name)(**options)
