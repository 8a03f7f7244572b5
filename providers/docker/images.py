"""Image references → tags on the local daemon, resolved once per process.

`image` is a tag (`hudray-demo:t`, `python:3.11-slim`) or a directory holding
`Dockerfile.hud` / `Dockerfile` (providers/imagedir.py). At plan time a directory is built
(tag `hudray-local/<dir>:<content hash>`, so an unchanged directory is never rebuilt) and a
tag the daemon lacks is pulled (option pull=missing) or refused (pull=never) — one clear
error before any container exists. Workers only turn the reference into its tag.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable

from .. import imagedir
from ..errors import ProviderConfigError
from . import wheelhouse
from .daemon import Daemon
from .options import COMMAND_LABEL, check_command

log = logging.getLogger("providers.docker")

_TAGS: dict[tuple[str, str], str] = {}  # (reference, build args) → tag (hashing is costly)
_PRESENT: set[tuple[str, str]] = set()  # (docker_host, tag) known to be on the daemon
_COMMANDS: dict[tuple[str, str], str | None] = {}  # (docker_host, tag) → its command label
_LOCK = threading.Lock()


def tag_for(ref: str, build_args: dict[str, str] | None = None) -> str:
    """The tag a reference runs as (a directory: its content-hash tag)."""
    key = (ref, json.dumps(build_args or {}, sort_keys=True))
    with _LOCK:
        if key not in _TAGS:
            _TAGS[key] = (imagedir.default_tag(ref, build_args) if imagedir.is_image_dir(ref)
                          else ref)
        return _TAGS[key]


def ensure(daemon: Daemon, ref: str, pull: str, build_args: dict[str, str] | None = None) -> str:
    """Make `ref` runnable on the daemon (build a directory, pull a missing tag); its tag."""
    if imagedir.is_image_dir(ref):
        # Before the tag: the wheels are part of the content the tag hashes.
        prepare(daemon, ref, dict(build_args or {}), lambda line: log.info("%s", line))
    tag = tag_for(ref, build_args)
    key = (daemon.docker_host, tag)
    if key in _PRESENT:
        return tag
    if not daemon.has_image(tag):
        if imagedir.is_image_dir(ref):
            log.info("docker: building %s from %s", tag, ref)
            build(daemon, ref, tag, dict(build_args or {}),
                  lambda line: log.debug("build %s: %s", tag, line))
        elif pull == "never":
            raise ProviderConfigError(
                f"provider 'docker': image {ref!r} is not on the daemon at {daemon.docker_host} "
                "and pull=never (build it: hud-ray image build DIR --tag "
                f"{ref}, or give --provider-opt image=DIR)")
        elif (error := daemon.pull(ref)) is not None:
            raise ProviderConfigError(
                f"provider 'docker': image {ref!r} is not on the daemon at {daemon.docker_host} "
                f"and pulling it failed: {error} (build it: hud-ray image build DIR --tag "
                f"{ref}, or give --provider-opt image=DIR)")
    _PRESENT.add(key)
    return tag


def prepare(daemon: Daemon, directory: str, build_args: dict[str, str],
            on_line: Callable[[str], None]) -> None:
    """What the build context needs from the host before it is hashed or sent: the
    offline wheelhouse, when the directory asks for one (wheelhouse.py)."""
    wheelhouse.ensure(daemon, directory, build_args, on_line)


def build(daemon: Daemon, directory: str, tag: str, build_args: dict[str, str],
          on_line: Callable[[str], None]) -> None:
    """Build DIR's Dockerfile.hud (else Dockerfile) with its context staged with envkit
    (and its wheelhouse filled first, when it asks for one)."""
    prepare(daemon, directory, build_args, on_line)
    dockerfile = imagedir.dockerfile(directory)
    daemon.build(imagedir.context_tar(directory), tag, dockerfile.name, build_args, on_line)
    _PRESENT.add((daemon.docker_host, tag))


def command_label(daemon: Daemon, tag: str) -> str | None:
    """The image's own server command (label `hud-ray.command`), None when it has none;
    read once per process and tag. A label that is no valid template is a config error."""
    key = (daemon.docker_host, tag)
    if key not in _COMMANDS:
        status, body = daemon.request("GET", f"/images/{urllib.parse.quote(tag, safe='')}/json")
        if status == 404:
            return None  # not cached: creating a container names the missing image
        if status >= 400:
            raise ProviderConfigError(f"provider 'docker': inspecting image {tag!r}: "
                                      f"[{status}] {body[:200].decode(errors='replace')}")
        value = ((json.loads(body).get("Config") or {}).get("Labels") or {}).get(COMMAND_LABEL)
        if value is not None:
            try:
                check_command(value)
            except ValueError as exc:
                raise ProviderConfigError(f"provider 'docker': image {tag!r}: label "
                                          f"{COMMAND_LABEL} {exc}") from None
        _COMMANDS[key] = value
    return _COMMANDS[key]
