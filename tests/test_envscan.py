"""hud_ray/envscan.py: template ids read from an envkit file without running it — and
None whenever the file could register one the scan cannot see."""

from __future__ import annotations

import textwrap

import pytest

from hud_ray.envscan import scan

HEAD = "from hud_ray.envkit import Environment\nenv = Environment('demo')\n"


def _scan(tmp_path, body: str, env_name: str | None = None, head: str = HEAD):
    path = tmp_path / "env.py"
    path.write_text(head + textwrap.dedent(body))
    return scan(path, env_name)


def test_literal_ids_and_function_names(tmp_path):
    assert _scan(tmp_path, """
        @env.template("count", description="x")
        async def count(): yield "p"; yield 1.0
        @env.template(id="arith")
        async def a(): yield "p"; yield 1.0
        @env.template()
        async def by_name(): yield "p"; yield 1.0
        @env.capability("kv")
        async def kv(r, w): pass
        @env.initialize
        async def up(): pass
    """) == {"count", "arith", "by_name"}


@pytest.mark.parametrize("body", [
    "NAME = 'x'\n@env.template(NAME)\nasync def t(): yield 1\n",          # computed id
    "import helpers\nhelpers.register(env)\n",                           # env passed on
    "alias = env\n",                                                     # aliased
    "env.templates['x'] = None\n",                                       # dict touched
    "exec('...')\n",                                                     # opaque code
    "register = env.template\n",                                         # not called
    "for n in ['a', 'b']:\n    env.template(n)(lambda: None)\n",         # loop, computed
])
def test_anything_the_scan_cannot_follow_is_not_knowable(tmp_path, body):
    assert _scan(tmp_path, body) is None


def test_no_environment_built_in_the_file_is_not_knowable(tmp_path):
    assert _scan(tmp_path, "from shared import env\n", head="") is None
    assert _scan(tmp_path, "def broken(:\n") is None  # a syntax error: the sandbox says


def test_several_environments_by_name(tmp_path):
    head = ("from hud_ray.envkit import Environment\n"
            "alpha = Environment('alpha')\nbeta = Environment(name='beta')\n")
    body = ("@alpha.template('a1')\nasync def a(): yield 1\n"
            "@beta.template('b1')\nasync def b(): yield 1\n")
    assert _scan(tmp_path, body, "alpha", head=head) == {"a1"}
    assert _scan(tmp_path, body, "beta", head=head) == {"b1"}
    assert _scan(tmp_path, body, None, head=head) is None  # envkit would refuse: which one?
    assert _scan(tmp_path, body, "gamma", head=head) is None
