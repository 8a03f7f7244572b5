"""Sandbox providers for hud_ray (no Ray, no hud_ray imports: usable on their own)."""

from .base import (
    LABEL_OWNER,
    LABEL_ROLLOUT,
    LABEL_RUN,
    LABEL_SANDBOX,
    LABEL_WORKER,
    Capabilities,
    Endpoint,
    Provider,
    Resources,
    SandboxHandle,
    SandboxSpec,
    sandbox_name,
    shielded,
)
from .errors import (
    CreateError,
    NotReadyError,
    ProviderConfigError,
    ProviderError,
    QuotaError,
    SandboxError,
    UnsupportedSpecError,
)
from .registry import available, get_provider, provider_class

__all__ = [
    "LABEL_OWNER",
    "LABEL_ROLLOUT",
    "LABEL_RUN",
    "LABEL_SANDBOX",
    "LABEL_WORKER",
    "Capabilities",
    "CreateError",
    "Endpoint",
    "NotReadyError",
    "Provider",
    "ProviderConfigError",
    "ProviderError",
    "QuotaError",
    "Resources",
    "SandboxError",
    "SandboxHandle",
    "SandboxSpec",
    "UnsupportedSpecError",
    "available",
    "get_provider",
    "provider_class",
    "sandbox_name",
    "shielded",
]
