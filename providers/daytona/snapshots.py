"""Snapshot resolution: once per process and snapshot name, behind a lock.

With an image recipe the snapshot's name carries the recipe's hash (`<prefix>-<sha256[:12]>`),
so a changed image, entrypoint or resource request builds a new snapshot and a stale one is
never reused. Concurrent rollouts wait on the same lock instead of racing a build; another
process building the same name shows up as 409 / a building state and is waited for.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .. import imagedir
from ..base import SandboxSpec
from ..errors import ProviderConfigError, SandboxError
from .options import DaytonaOptions, Recipe, recipe_for
from .retry import Kind, classify, describe

log = logging.getLogger("providers.daytona")

# (api_url, snapshot name) already known ACTIVE in this process.
_RESOLVED: set[tuple[str, str]] = set()
# One lock per (event loop, key): asyncio locks belong to a loop.
_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)

Call = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


def _lock(key: tuple[str, str]) -> asyncio.Lock:
    per_loop = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(key, asyncio.Lock())


def _state(snapshot: Any) -> str:
    state = getattr(snapshot, "state", None)
    return str(getattr(state, "value", state) or "")


def forget_resolved() -> None:
    """Drop the per-process cache (tests; after deleting snapshots by hand)."""
    _RESOLVED.clear()


async def resolve_snapshot(
    client: Any, options: DaytonaOptions, spec: SandboxSpec, call: Call
) -> str | None:
    """The snapshot name a sandbox for `spec` starts from (None = Daytona's default)."""
    recipe = recipe_for(options, spec)
    if recipe is None and options.snapshot is None:
        return None
    name = recipe.snapshot_name(options.snapshot) if recipe else str(options.snapshot)
    key = (options.api_url or "", name)
    if key in _RESOLVED:
        return name
    async with _lock(key):
        if key not in _RESOLVED:
            await _ensure_active(client, options, name, recipe, call)
            _RESOLVED.add(key)
    return name


async def _ensure_active(
    client: Any, options: DaytonaOptions, name: str, recipe: Recipe | None, call: Call
) -> None:
    deadline = time.monotonic() + options.snapshot_timeout_s
    activated = False
    while True:
        try:
            snapshot = await call(f"get snapshot {name!r}", lambda: client.snapshot.get(name))
        except Exception as exc:
            if classify(exc) is not Kind.NOT_FOUND:
                raise
            if recipe is None:
                raise ProviderConfigError(
                    f"provider 'daytona': snapshot {name!r} not found (option snapshot); "
                    "give --provider-opt image=<registry image> to build it"
                ) from None
            if await _build(client, options, name, recipe, call):
                return
            continue  # someone else is building it: wait below on the next get
        state = _state(snapshot)
        if state == "active":
            return
        if state in ("error", "build_failed"):
            raise ProviderConfigError(
                f"provider 'daytona': snapshot {name!r} is {state}: "
                f"{getattr(snapshot, 'error_reason', None) or 'no reason given'} "
                "(fix the image, or delete the snapshot to rebuild it)"
            )
        if state == "inactive" and not activated:
            activated = True
            await call(f"activate snapshot {name!r}", lambda: client.snapshot.activate(name))
            continue
        if time.monotonic() > deadline:
            raise SandboxError(
                f"provider 'daytona': snapshot {name!r} still {state!r} after "
                f"{options.snapshot_timeout_s:.0f}s (snapshot_timeout_s)"
            )
        await asyncio.sleep(options.snapshot_poll_s)


async def _build(
    client: Any, options: DaytonaOptions, name: str, recipe: Recipe, call: Call
) -> bool:
    """Build the snapshot; False when another builder got there first (409)."""
    from daytona import CreateSnapshotParams, Image

    staged = imagedir.stage(recipe.context_dir) if recipe.context_dir else None
    source = recipe.context_dir or recipe.image
    # An image directory: the SDK reads its Dockerfile and uploads what it COPYs (the
    # directory staged with `.hud-ray/`, as `hud-ray image build` sends the local daemon).
    image = Image.from_dockerfile(imagedir.dockerfile(staged)) if staged else recipe.image
    params = CreateSnapshotParams(
        name=name,
        image=image,
        resources=recipe.sdk_resources(),
        entrypoint=recipe.entrypoint,
    )
    log.info("daytona: building snapshot %s from %s", name, source)
    try:
        await call(
            f"build snapshot {name!r}",
            lambda: client.snapshot.create(
                params,
                on_logs=lambda line: log.debug("snapshot %s: %s", name, line),
                timeout=options.snapshot_timeout_s,
            ),
        )
    except Exception as exc:
        kind = classify(exc)
        if kind is Kind.CONFLICT:
            return False
        if kind is Kind.FAILED:
            raise ProviderConfigError(
                f"provider 'daytona': snapshot {name!r} from image {source!r} failed to "
                f"build (option image / runtime_config.image): {describe(exc)}"
            ) from None
        raise
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)
    return True
