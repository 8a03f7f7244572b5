"""Errors a provider raises. hud_ray maps them onto the failure taxonomy:

- ProviderConfigError / UnsupportedSpecError → the run stops early (nothing to retry:
  wrong credentials, unknown option, a resource the provider cannot honour).
- QuotaError → `quota_error` (retried with back-off until the retry budget runs out).
- SandboxError and subclasses → `infra_error` (retried in a new sandbox).
- EnvStartError → `env_error`, never retried: the env server itself failed to start (it
  exited on its own before serving — an import error, a missing module, a bad command —
  or it never served within its startup budget). The first sandbox of a run failing this
  way stops the run: every other sandbox would fail the same way.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class for every provider failure."""


class ProviderConfigError(ProviderError):
    """Bad or missing configuration (credentials, option, extra not installed). Fatal."""


class UnsupportedSpecError(ProviderConfigError):
    """The task asks for something this provider cannot give (GPU, image, resource)."""


class SandboxError(ProviderError):
    """The sandbox could not be created, reached or kept alive. Retryable."""


class CreateError(SandboxError):
    """The provider failed to create a sandbox."""


class NotReadyError(SandboxError):
    """The sandbox never became reachable (includes its last output lines)."""


class EnvStartError(ProviderError):
    """The env server failed to start on its own (the message names file, line, module)."""


class QuotaError(ProviderError):
    """Rate limited or over quota; `retry_after_s` when the provider said."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
