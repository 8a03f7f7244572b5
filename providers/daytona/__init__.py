"""The `daytona` provider: a package split by concern (options, retries, snapshots, SSH
tunnel, provider). Importing it does not import the Daytona SDK."""

from .options import DaytonaOptions, DaytonaResources
from .provider import DaytonaProvider

__all__ = ["DaytonaOptions", "DaytonaProvider", "DaytonaResources"]
