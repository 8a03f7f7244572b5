"""The scheduler's own exception (here, so its parts can raise it without a cycle)."""


class RunAborted(RuntimeError):
    """The run stopped early (fatal config error, error budget). Rows so far are kept."""
