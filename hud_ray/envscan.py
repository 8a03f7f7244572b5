"""The template ids of an envkit env file, read from its source without running it.

The driver never imports an env file (it may need the sandbox's packages or secrets, and
importing user code has side effects), but most env files declare their templates as
`@env.template("id")` on module-level functions: that much can be read with `ast`, so a
task naming a template the env lacks is refused at plan time, naming its line.

The answer is only given when it is complete. `scan` returns None — "not knowable, let the
sandbox say" — as soon as the file could register a template the scan cannot see: a
template id that is not a literal, the Environment object passed anywhere or aliased, its
`templates` dict touched, `exec` / `eval` / `globals()` / `setattr`, or no Environment
built in the file itself. A template the scan lists but the env lacks at run time (say,
registered under an `if`) only means the check lets a task through that the env refuses.
"""

from __future__ import annotations

import ast
from pathlib import Path

# Names whose use could register templates out of the scan's sight.
_OPAQUE_CALLS = frozenset({"exec", "eval", "globals", "vars", "setattr", "__import__",
                           "compile", "locals"})
# What a file may do with its Environment object without hiding a template.
_HARMLESS_ATTRS = frozenset({"capability", "add_capability", "on_start", "on_stop",
                             "initialize", "shutdown", "name", "version"})


class _Opaque(Exception):
    """The file does something the scan cannot follow."""


def scan(path: str | Path, env_name: str | None = None) -> set[str] | None:
    """Template ids the env in `path` serves (the one named `env_name` when several are
    built, as `python -m hud_ray.envkit FILE ENV_NAME` picks), or None if not knowable."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=str(path))
        envs = _environments(tree)
        if not envs:
            return None
        chosen = [var for var, name in envs.items() if env_name is None or name == env_name]
        if len(chosen) != 1 or (env_name is not None and None in envs.values()):
            return None  # the loader would refuse, or a name is not a literal
        _check_opaque(tree)
        return _templates(tree, chosen[0], set(envs))
    except (OSError, SyntaxError, ValueError, _Opaque):
        return None


def _environments(tree: ast.Module) -> dict[str, str | None]:
    """{variable: env name (None if not a literal)} for `X = Environment(...)` at top level."""
    found: dict[str, str | None] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and _callee(node.value) == "Environment"):
            continue
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise _Opaque
        found[node.targets[0].id] = _literal_arg(node.value, 0, "name")
    return found


def _check_opaque(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _OPAQUE_CALLS:
            raise _Opaque


def _templates(tree: ast.Module, var: str, env_vars: set[str]) -> set[str]:
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    templates: set[str] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Name) and node.id in env_vars):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Assign) and node in parent.targets:
            continue  # the `X = Environment(...)` itself
        if not (isinstance(parent, ast.Attribute) and parent.value is node):
            raise _Opaque  # passed to a function, aliased, returned: could register anything
        if parent.attr != "template":
            if parent.attr not in _HARMLESS_ATTRS:
                raise _Opaque  # e.g. `env.templates[...] = ...`
            continue
        call = parents.get(parent)
        if not (isinstance(call, ast.Call) and call.func is parent):
            raise _Opaque
        if node.id == var:
            templates.add(_template_id(call, parents.get(call)))
    return templates


def _template_id(call: ast.Call, owner: ast.AST | None) -> str:
    literal = _literal_arg(call, 0, "id")
    if literal is not None:
        return literal
    if call.args or any(k.arg == "id" for k in call.keywords):
        raise _Opaque  # an id computed at run time
    if isinstance(owner, ast.FunctionDef | ast.AsyncFunctionDef) and call in owner.decorator_list:
        return owner.name  # `@env.template()`: the function's name
    raise _Opaque


def _literal_arg(call: ast.Call, index: int, keyword: str) -> str | None:
    if len(call.args) > index:
        value = call.args[index]
    else:
        value = next((k.value for k in call.keywords if k.arg == keyword), None)
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    return None


def _callee(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None
