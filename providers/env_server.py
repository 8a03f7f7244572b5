"""Which server serves an env file: hud's own (`hud.environment.server`) or envkit.

An env file written the way hud's docs write it (`from hud import Environment`,
`from hud.environment import Environment`, FastMCP tools, `env.workspace(...)`) must be
served by hud's server: envkit only knows its own `Environment`. An envkit file imports
`hud_ray.envkit`. The choice is read from the file's imports (its AST, nothing executed),
so the driver can make it at plan time without importing the env or hud.
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

ServerKind = Literal["hud", "envkit"]
_PARSE_LOCK = threading.Lock()

COMMANDS: dict[ServerKind, str] = {
    "envkit": "{python} -m hud_ray.envkit {env_file} --host 127.0.0.1 --port 0",
    "hud": "{python} -m hud.environment.server {env_file} --host 127.0.0.1 --port 0",
}


@dataclass(frozen=True)
class ZygoteRecipe:
    """How the local provider's fork server (zygote.py) stands in for a server command,
    passed to it as data (it imports nothing of hud_ray, nor of providers).

    `preload`: modules imported before the env file, shared copy-on-write by every fork
    (what each fresh server would import again). `prepare`: `module:function` called as
    `function(env_file, env_name, host)` that loads the env and returns the call each
    forked child serves with; None = hud's own server, whose loading the zygote knows."""

    preload: tuple[str, ...] = ()
    prepare: str | None = None

    def argv(self) -> list[str]:
        args = [f"--preload={name}" for name in self.preload]
        return args + ([f"--prepare={self.prepare}"] if self.prepare else [])


# Keyed by the module a server command runs (`python -m MODULE`).
ZYGOTE_RECIPES: dict[str, ZygoteRecipe] = {
    "hud_ray.envkit": ZygoteRecipe(prepare="hud_ray.envkit.__main__:zygote_prepare"),
    "hud.environment.server": ZygoteRecipe(preload=("hud.environment.server",)),
}


def imported_roots(source: str) -> set[str]:
    """Dotted module names a file imports (`from a.b import c` -> `a.b`)."""
    names: set[str] = set()
    with _PARSE_LOCK:  # CPython 3.11's ast.parse is not thread-safe (two runs planned at once)
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def detect_server(env_file: str | Path) -> ServerKind:
    """`hud` when the file imports hud (and not envkit), else `envkit`.

    A file that cannot be parsed is left to envkit, whose loader reports the syntax
    error with its file and line."""
    path = Path(env_file)
    if path.is_dir():
        path = path / "env.py"
    try:
        modules = imported_roots(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return "envkit"
    if any(m == "hud_ray.envkit" or m.startswith("hud_ray.envkit.") for m in modules):
        return "envkit"
    if any(m == "hud" or m.startswith("hud.") for m in modules):
        return "hud"
    return "envkit"


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)')
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)|"
                        r"[A-Za-z_][\w.]*Error)(: (?P<msg>.*))?$")


_LOCATED = re.compile(r"^\S+\.py:\d+: ")
# Frames in these directories are the server's machinery, not the user's env file.
_MACHINERY = (str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent
                                                        / "hud_ray"))


def _is_users(file: str) -> bool:
    return not (file.startswith("<") or "site-packages" in file or "/lib/python" in file
                or file.startswith(_MACHINERY))


def start_failure_summary(output: str) -> str:
    """One line saying why an env server died before serving, from its last output:
    envkit's own `envkit: cannot load FILE:LINE: Type: message`, else the innermost
    frame outside site-packages plus the exception line of a Python traceback, else the
    last line it printed."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("envkit: "):
            return line.removeprefix("envkit: ")
    exception = next((i for i in range(len(lines) - 1, -1, -1)
                      if _EXCEPTION.match(lines[i].strip())), None)
    if exception is not None:
        match = _EXCEPTION.match(lines[exception].strip())
        assert match is not None
        if match["msg"] and _LOCATED.match(match["msg"]):
            return match["msg"]  # a loader's own error already names file and line
        frames = [_FRAME.match(line) for line in lines[:exception]]
        own = [m for m in frames if m and _is_users(m["file"])]
        where = f"{own[-1]['file']}:{own[-1]['line']}: " if own else ""
        return f"{where}{lines[exception].strip()}"
    return lines[-1].strip() if lines else "(no output)"
