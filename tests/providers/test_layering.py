"""providers/ stands on its own: no module under it imports hud_ray or ray (by statement,
or by a literal name given to importlib / __import__). What a provider's helper process
must load of hud_ray (the zygote serving envkit) reaches it as data: env_server's table."""

from __future__ import annotations

import ast
from pathlib import Path

import providers

ROOT = Path(providers.__file__).resolve().parent
FORBIDDEN = ("hud_ray", "ray")


def _forbidden(name: str | None) -> bool:
    return bool(name) and any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def imports_of(source: str) -> list[tuple[int, str]]:
    """(line, module) for every import of hud_ray or ray in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if _forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _forbidden(node.module):
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (name in ("import_module", "__import__") and isinstance(first, ast.Constant)
                    and isinstance(first.value, str) and _forbidden(first.value)):
                found.append((node.lineno, first.value))
    return found


def test_no_module_under_providers_imports_hud_ray_or_ray():
    offenders = [f"{path.relative_to(ROOT.parent)}:{line}: {module}"
                 for path in sorted(ROOT.rglob("*.py"))
                 for line, module in imports_of(path.read_text(encoding="utf-8"))]
    assert not offenders, "providers/ must not import hud_ray or ray:\n" + "\n".join(offenders)


def test_the_scan_sees_each_way_of_importing():
    source = ("import ray\nfrom hud_ray.envkit import x\nimport importlib\n"
              "importlib.import_module('hud_ray.envkit.__main__')\n__import__('ray.util')\n"
              "import rayon\nfrom .hud_ray import y\n")
    assert imports_of(source) == [(1, "ray"), (2, "hud_ray.envkit"),
                                  (4, "hud_ray.envkit.__main__"), (5, "ray.util")]
