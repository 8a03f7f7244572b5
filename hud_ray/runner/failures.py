"""How a rollout's failure is classified: the status its row gets."""

from __future__ import annotations

from hud_ray.schema import Status
from providers import EnvStartError, ProviderConfigError, QuotaError


class RolloutFailure(Exception):
    """Internal: ends the phases early with a classified status."""

    def __init__(self, status: Status, exc: BaseException | str, *, fatal: bool = False,
                 error_type: str | None = None) -> None:
        message = exc if isinstance(exc, str) else f"{exc}"
        super().__init__(message)
        self.status = status
        self.error_type = error_type or (
            "RolloutFailure" if isinstance(exc, str) else type(exc).__name__)
        self.fatal = fatal


# error_type of a row whose env server never started serving (it died at start-up, or
# never answered hello): the scheduler stops a run whose first sandbox fails this way.
ENV_START_ERROR = "EnvStartError"


def provider_failure(exc: Exception) -> RolloutFailure:
    """A provider's error in its class: config (fatal), quota, or infra (retryable)."""
    if isinstance(exc, ProviderConfigError):
        return RolloutFailure(Status.INFRA_ERROR, exc, fatal=True)
    if isinstance(exc, EnvStartError):
        return RolloutFailure(Status.ENV_ERROR, exc, error_type=ENV_START_ERROR)
    if isinstance(exc, QuotaError):
        return RolloutFailure(Status.QUOTA_ERROR, exc)
    return RolloutFailure(Status.INFRA_ERROR, exc)
