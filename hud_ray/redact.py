"""Secrets kept off disk and out of logs, at every depth.

Two layers, because neither alone is enough:

- `redacted(obj)` masks what *looks* secret before it is recorded (the manifest's config,
  a sweep's fingerprint): a key whose name says so (`api_key`, `MODAL_TOKEN_SECRET`), every
  value of an `env` / `env_vars` / `secrets` dict (an env var's value is the user's business,
  whatever its name), and the user:password part of a URL.
- `Scrubber` removes the *values* masked above wherever they turn up anyway: an env server
  that echoes its environment into an error, an SDK exception quoting its arguments, a log
  line. It is applied to every row before Parquet, to the manifest and to log records.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Substrings of a key name that mark its value secret (in option names and env vars; a
# harmless `*key*` option masked too is the cheaper mistake).
SECRET_KEY_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "auth")
# Dicts whose every value is masked, whatever the key: environment variables and secrets.
SECRET_CONTAINERS = frozenset({"env", "env_vars", "envs", "environment", "secrets"})
# scheme://user[:password]@ — both parts masked: a user name can be a token (Daytona's SSH).
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s:]+(?::[^/@\s]*)?@")
# Shorter values are not scrubbed from free text: "1" or "true" would mangle every message.
MIN_SCRUB_CHARS = 6


def looks_secret(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in SECRET_KEY_WORDS)


def redact_url(text: str) -> str:
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{MASK}@", text)


def redacted(obj: Any, *, mask_all: bool = False) -> Any:
    """A copy of `obj` (dicts, lists, strings, scalars) with secrets masked at any depth."""
    if isinstance(obj, dict):
        return {k: (MASK if _masked_leaf(k, v, mask_all) else
                    redacted(v, mask_all=mask_all or str(k).lower() in SECRET_CONTAINERS))
                for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redacted(v, mask_all=mask_all) for v in obj]
    if isinstance(obj, str):
        return MASK if mask_all else redact_url(obj)
    return obj


def _masked_leaf(key: Any, value: Any, mask_all: bool) -> bool:
    if isinstance(value, dict | list | tuple):
        return False  # recurse: the leaves are masked, the shape stays readable
    if value is None or isinstance(value, bool):
        return False
    return mask_all or looks_secret(str(key))


def secret_values(obj: Any, *, mask_all: bool = False) -> set[str]:
    """Every string value `redacted` would mask (and URL credentials), for scrubbing."""
    found: set[str] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            inner = mask_all or str(key).lower() in SECRET_CONTAINERS
            if _masked_leaf(key, value, mask_all) and not isinstance(value, dict | list | tuple):
                found.add(str(value))
            else:
                found |= secret_values(value, mask_all=inner)
    elif isinstance(obj, list | tuple):
        for value in obj:
            found |= secret_values(value, mask_all=mask_all)
    elif isinstance(obj, str):
        if mask_all:
            found.add(obj)
        for match in _URL_CREDENTIALS.finditer(obj):
            creds = match.group(0)[len(match.group(1)):-1]
            found.update(part for part in creds.split(":", 1) if part)
    return {v for v in found if len(v) >= MIN_SCRUB_CHARS}


class Scrubber:
    """Replaces known secret values (and URL credentials) in text and in row values."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        # Longest first: a secret that contains another is masked whole.
        self.values = sorted({v for v in values if len(v) >= MIN_SCRUB_CHARS},
                             key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self.values)

    def text(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, MASK)
        return redact_url(text) if "@" in text else text

    def value(self, obj: Any) -> Any:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {k: self.value(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        return obj

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """A result row with every string (error, answer, steps, grade, ...) scrubbed."""
        return {k: self.value(v) if isinstance(v, str | dict | list) else v
                for k, v in row.items()}


def run_scrubber(provider_options: dict[str, Any], env_vars: dict[str, str]) -> Scrubber:
    """What a run must never write: its provider options' secrets and the forwarded
    credentials (MODAL_TOKEN_SECRET, DAYTONA_API_KEY, HUD_API_KEY, ...)."""
    values = secret_values(provider_options)
    values |= {v for k, v in env_vars.items() if looks_secret(k)}
    return Scrubber(values)


_installed: list[Scrubber] = []


def install_log_scrubber(scrubber: Scrubber) -> None:
    """Scrub every log record made in this process from now on (driver and workers):
    a record factory sees records of every logger, also third-party ones."""
    if not scrubber or any(s.values == scrubber.values for s in _installed):
        return
    _installed.append(scrubber)
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.msg:
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave it to logging's own handling
                return record
            record.msg, record.args = scrubber.text(message), None
        return record

    logging.setLogRecordFactory(factory)
