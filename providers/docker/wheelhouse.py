"""Offline wheelhouses for env images whose Dockerfile installs Python packages (hud).

No package registry is reachable from inside a build on these machines (and often not on a
user's build host either), so an image that needs `hud` installs it from wheels the host
downloaded into the build context: `DIR/wheelhouse/`, filled with `pip download` from
`DIR/requirements.txt` for *the image's* Python — its version, ABI, glibc and machine,
read by running its base image once (never guessed from the host's interpreter). The
Dockerfile then runs `pip install --no-index --find-links` from it (see
tests/fakes/hud_envs/tools/Dockerfile.hud).

Why a step of every build of the directory rather than a separate command: the same
`DIR` is built by `hud-ray image build` and at plan time by `--provider-opt image=DIR`;
both must work with nothing run before them. The step is asked for by the directory
itself (a `requirements.txt` and a Dockerfile that copies `wheelhouse/`), so envkit
images (examples/demo) never pay for it. A stamp (requirements + target) skips it when
nothing changed: a rebuild needs no registry at all; a change downloads through pip's
cache (kept warm: no `--no-cache-dir`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import imagedir
from ..errors import ProviderConfigError
from .daemon import Daemon

WHEELHOUSE = "wheelhouse"
REQUIREMENTS = "requirements.txt"
STAMP = ".hud-ray-wheelhouse.json"
PROBE = ("import json, os, platform, sys; print(json.dumps({'impl': sys.implementation.name, "
         "'version': '%d.%d' % sys.version_info[:2], 'glibc': os.confstr('CS_GNU_LIBC_VERSION') "
         "or '', 'machine': platform.machine()}))")
PROBE_TIMEOUT_S = 60.0
DOWNLOAD_TIMEOUT_S = 900.0
_COPIES_WHEELHOUSE = re.compile(rf"^\s*(COPY|ADD)\b[^\n]*\b{WHEELHOUSE}\b", re.I | re.M)
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)", re.I | re.M)
_ARG = re.compile(r"^\s*ARG\s+(\w+)(?:=(\S*))?", re.I | re.M)
_TARGETS: dict[tuple[str, str], PythonTarget] = {}  # (docker_host, image) → its Python


@dataclass(frozen=True)
class PythonTarget:
    """The interpreter wheels are chosen for: `cp` + 3.11 + glibc 2.36 + x86_64."""

    impl: str
    version: str
    glibc: str
    machine: str

    def pip_args(self) -> list[str]:
        """`pip download` flags selecting this interpreter's wheels (binary only: an sdist
        would build for the host, not the image)."""
        nodot = self.version.replace(".", "")
        impl = "cp" if self.impl == "cpython" else self.impl[:2]
        args = ["--only-binary=:all:", "--python-version", self.version,
                "--implementation", impl, "--abi", f"{impl}{nodot}", "--abi", "abi3",
                "--abi", "none"]
        for platform in self.platforms():
            args += ["--platform", platform]
        return args

    def platforms(self) -> list[str]:
        """Every manylinux tag this glibc runs (pip does not expand PEP 600 tags itself)."""
        arch = self.machine
        found = re.fullmatch(r"glibc (\d+)\.(\d+)", self.glibc.strip())
        if not found:  # musl or unknown libc: pure-Python wheels and linux_* only
            return [f"linux_{arch}"]
        major, minor = int(found[1]), int(found[2])
        tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{arch}" for m, name in legacy.items() if minor >= m]
        return [*tags, f"linux_{arch}"]


def wanted(directory: str | Path) -> bool:
    """The directory asks for a wheelhouse: a requirements.txt and a Dockerfile that
    copies `wheelhouse/` into the image."""
    root = Path(directory).expanduser()
    if not (root / REQUIREMENTS).is_file():
        return False
    return bool(_COPIES_WHEELHOUSE.search(imagedir.dockerfile(root).read_text()))


def base_image(directory: str | Path, build_args: dict[str, str]) -> str:
    """The first stage's FROM image, with `${ARG}` from build args, else ARG defaults."""
    path = imagedir.dockerfile(directory)
    text = path.read_text()
    found = _FROM.search(text)
    if not found:
        raise ProviderConfigError(f"{path}: no FROM line")
    defaults = {m[1]: m[2] or "" for m in _ARG.finditer(text[: found.start()])}
    values = {**defaults, **build_args}
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m[1], ""), found[1])
    if not image:
        raise ProviderConfigError(f"{path}: FROM {found[1]} names no image (give "
                                  "--build-arg for it)")
    return image


def probe(daemon: Daemon, image: str) -> PythonTarget:
    """Run `image` once (no network) and read its Python's version, libc and machine."""
    key = (daemon.docker_host, image)
    if key in _TARGETS:
        return _TARGETS[key]
    if not daemon.has_image(image):
        raise ProviderConfigError(f"wheelhouse: base image {image!r} is not on the daemon at "
                                  f"{daemon.docker_host} (its Python decides which wheels fit)")
    output = _run_once(daemon, image, ["python3", "-c", PROBE])
    try:
        target = PythonTarget(**json.loads(output.strip().splitlines()[-1]))
    except (ValueError, TypeError, IndexError):
        raise ProviderConfigError(f"wheelhouse: base image {image!r} has no working python3 "
                                  f"(it printed: {output.strip()[-300:]!r})") from None
    _TARGETS[key] = target
    return target


def _run_once(daemon: Daemon, image: str, argv: list[str]) -> str:
    """Create, start, wait for and remove one container; its output (a TTY: not framed)."""
    body = json.dumps({"Image": image, "Cmd": argv, "Tty": True, "Entrypoint": [],
                       "Labels": {"hud-ray.purpose": "wheelhouse-probe"},
                       "HostConfig": {"NetworkMode": "none"}}).encode()
    status, reply = daemon.request("POST", "/containers/create", body,
                                   {"Content-Type": "application/json"})
    if status >= 400:
        raise ProviderConfigError(f"wheelhouse: cannot run base image {image!r}: [{status}] "
                                  f"{reply[:200].decode(errors='replace')}")
    container_id = json.loads(reply)["Id"]
    try:
        status, reply = daemon.request("POST", f"/containers/{container_id}/start")
        if status >= 400:  # e.g. no python3 in the image: the daemon says so
            raise ProviderConfigError(f"wheelhouse: base image {image!r}: cannot run "
                                      f"{argv[0]}: {reply[:300].decode(errors='replace')}")
        daemon.request("POST", f"/containers/{container_id}/wait", timeout=PROBE_TIMEOUT_S)
        _, logs = daemon.request("GET", f"/containers/{container_id}/logs?stdout=1&stderr=1")
        return logs.decode(errors="replace")
    finally:
        daemon.request("DELETE", f"/containers/{urllib.parse.quote(container_id)}?force=1")


def ensure(daemon: Daemon, directory: str | Path, build_args: dict[str, str],
           on_line: Callable[[str], None]) -> Path | None:
    """Fill `DIR/wheelhouse/` for the image's Python when the directory asks for one;
    skipped (no registry touched) when requirements and target are unchanged."""
    root = Path(directory).expanduser().resolve()
    if not wanted(root):
        return None
    target = probe(daemon, base_image(root, build_args))
    requirements = (root / REQUIREMENTS).read_text()
    want = {"requirements": hashlib.sha256(requirements.encode()).hexdigest(),
            "target": asdict(target)}
    house = root / WHEELHOUSE
    stamp = house / STAMP
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        on_line(f"wheelhouse: {house} is up to date for {target.impl} {target.version} "
                f"{target.glibc} {target.machine}")
        return house
    shutil.rmtree(house, ignore_errors=True)  # stale wheels of old requirements: gone
    house.mkdir()
    started = time.monotonic()
    _download(root / REQUIREMENTS, house, target, on_line)
    stamp.write_text(json.dumps(want, sort_keys=True))
    on_line(f"wheelhouse: {len(list(house.glob('*.whl')))} wheels in {house} "
            f"({time.monotonic() - started:.1f}s)")
    return house


def _download(requirements: Path, house: Path, target: PythonTarget,
              on_line: Callable[[str], None]) -> None:
    # pip itself too: a base image with bare Python bootstraps pip from its wheel.
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--dest", str(house), *target.pip_args(), "-r", str(requirements), "pip"]
    on_line("wheelhouse: " + " ".join(argv[1:]))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        shutil.rmtree(house, ignore_errors=True)
        raise ProviderConfigError(f"wheelhouse: pip download for {requirements} took over "
                                  f"{DOWNLOAD_TIMEOUT_S:.0f}s") from None
    if done.returncode != 0:
        shutil.rmtree(house, ignore_errors=True)  # no half wheelhouse with a fresh stamp
        raise ProviderConfigError(f"wheelhouse: pip download of {requirements} for "
                                  f"{target.impl} {target.version} {target.machine} failed "
                                  f"(exit {done.returncode}): {_pip_error(done)}")


def _pip_error(done: subprocess.CompletedProcess[str]) -> str:
    """pip's own error line (its last `ERROR:` line), else its last line."""
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["(no output)"])[-1]
