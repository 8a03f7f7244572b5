"""One image definition for every provider: a directory holding `Dockerfile.hud` (hud's
scaffold name) or `Dockerfile`, given as `--provider-opt image=DIR`.

The build context is the directory plus `.hud-ray/`, which holds hud_ray's stdlib-only env
server (`hud_ray/envkit`, no third-party imports) so an image with nothing but Python can
serve an envkit env file: the Dockerfile copies it with `COPY .hud-ray/ /opt/hud-ray/` and
sets `PYTHONPATH=/opt/hud-ray` (see examples/demo/Dockerfile.hud). Copying, rather than
bind-mounting envkit at run time, keeps the image self-contained, so the same directory
builds the same image on the local daemon (`hud-ray image build`), on Modal
(`Image.from_dockerfile`) and on Daytona (a snapshot), and runs with no hud_ray on the host
side of the sandbox. A hud env's Dockerfile simply ignores `.hud-ray/`.

Sources are found beside this package (providers/ and hud_ray/ are installed side by side),
never by importing hud_ray: providers/ stays importable on its own.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from .errors import ProviderConfigError

DOCKERFILES = ("Dockerfile.hud", "Dockerfile")
STAGE_DIR = ".hud-ray"
_ENVKIT = Path(__file__).resolve().parent.parent / "hud_ray"
_SKIP = ("__pycache__", ".git", ".venv", ".pytest_cache")
_TAG_CHARS = re.compile(r"[^a-z0-9_.-]+")


def is_image_dir(ref: str | None) -> bool:
    """True when an `image` value names a directory (else it is a tag or registry ref)."""
    return bool(ref) and os.path.isdir(os.path.expanduser(str(ref)))


def dockerfile(directory: str | Path) -> Path:
    """`DIR/Dockerfile.hud`, else `DIR/Dockerfile`; a clear error when neither exists."""
    root = Path(directory).expanduser()
    for name in DOCKERFILES:
        if (root / name).is_file():
            return root / name
    raise ProviderConfigError(f"image directory {str(directory)!r} has no Dockerfile.hud "
                              "or Dockerfile")


def envkit_files() -> list[tuple[Path, str]]:
    """(source, path in the context) of the stdlib env server shipped into `.hud-ray/`."""
    envkit = _ENVKIT / "envkit"
    if not envkit.is_dir():
        raise ProviderConfigError(f"hud_ray's envkit sources are missing beside {__file__}")
    files = [(_ENVKIT / "__init__.py", f"{STAGE_DIR}/hud_ray/__init__.py")]
    files += [(p, f"{STAGE_DIR}/hud_ray/envkit/{p.name}") for p in sorted(envkit.glob("*.py"))]
    return files


def context_files(directory: str | Path) -> list[tuple[Path, str]]:
    """Every file of the build context: the directory's own, then `.hud-ray/`."""
    root = Path(directory).expanduser().resolve()
    dockerfile(root)  # refuse a directory with nothing to build before reading it
    files: list[tuple[Path, str]] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in _SKIP for part in rel.parts) or rel.parts[0] == STAGE_DIR:
            continue
        if path.is_file():
            files.append((path, rel.as_posix()))
    return files + envkit_files()


def context_tar(directory: str | Path) -> bytes:
    """The build context as an uncompressed tar (what `POST /build` takes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for source, name in context_files(directory):
            info = tar.gettarinfo(str(source), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # the same sources give the same context, whenever staged
            with source.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def stage(directory: str | Path) -> Path:
    """A temporary copy of the context on disk (for SDKs that read a directory)."""
    staged = Path(tempfile.mkdtemp(prefix="hudray-image-"))
    for source, name in context_files(directory):
        target = staged / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return staged


_DIGESTS: dict[tuple[str, str], str] = {}


def digest(directory: str | Path, build_args: dict[str, str] | None = None) -> str:
    """Content hash of the context and build args: names what the directory builds.
    Rehashed only when a file's name, size or mtime changed (a rollout asks on every create)."""
    files = context_files(directory)
    stats = "\0".join(f"{name}:{src.stat().st_size}:{src.stat().st_mtime_ns}"
                       for src, name in files)
    args = "\0".join(f"{k}={v}" for k, v in sorted((build_args or {}).items()))
    key = (str(Path(directory).expanduser().resolve()), args + "\1" + stats)
    if key not in _DIGESTS:
        _DIGESTS[key] = _hash(files, build_args)
    return _DIGESTS[key]


def _hash(files: list[tuple[Path, str]], build_args: dict[str, str] | None) -> str:
    sha = hashlib.sha256()
    for source, name in files:
        sha.update(name.encode() + b"\0" + source.read_bytes() + b"\0")
    for key in sorted(build_args or {}):
        sha.update(f"{key}={(build_args or {})[key]}\0".encode())
    return sha.hexdigest()


def default_tag(directory: str | Path, build_args: dict[str, str] | None = None) -> str:
    """`hudray-local/<dir name>:<content hash>`: a changed Dockerfile or env builds anew."""
    name = _TAG_CHARS.sub("-", Path(directory).expanduser().resolve().name.lower()).strip("-.")
    return f"hudray-local/{name or 'env'}:{digest(directory, build_args)[:12]}"
