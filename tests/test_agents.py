"""hud_ray.agents: agent specs resolve to callables, or fail with one error naming the spec."""

from __future__ import annotations

import asyncio

import pytest

from hud_ray.agents import AgentSpecError, Session, agent_name, resolve_agent
from hud_ray.agents.rule import rule_agent
from hud_ray.tasks import Task


def session(prompt) -> Session:
    return Session(prompt=prompt, task=Task(id="t"), rollout_key="t#0")


def test_builtin_names_and_dotted_paths_resolve():
    assert resolve_agent("rule") is rule_agent
    assert resolve_agent("hud_ray.agents.rule:rule_agent") is rule_agent
    assert agent_name(rule_agent) == "hud_ray.agents.rule:rule_agent"
    assert asyncio.run(resolve_agent("nop")(session("x"))) == ""
    assert asyncio.run(resolve_agent("echo")(session([{"role": "user", "content": "hi"},
                                                      {"role": "user", "content": "there"}])))\
        == "hi\nthere"


def test_file_spec_resolves_and_is_cached(tmp_path):
    path = tmp_path / "my_agent.py"
    path.write_text("async def solve(session):\n    return 'forty-two'\n")
    agent = resolve_agent(f"{path}:solve")
    assert asyncio.run(agent(session("q"))) == "forty-two"
    assert resolve_agent(f"{path}:solve") is agent


@pytest.mark.parametrize("spec, named", [
    ("gpt-9000", "'gpt-9000'"),
    ("no_such_module_xyz:agent", "cannot import no_such_module_xyz"),
    ("json:nope", "has no attribute 'nope'"),
    ("json:__doc__", "'__doc__' is not callable"),
    ("/no/such/agent.py:solve", "file /no/such/agent.py not found"),
])
def test_bad_specs_are_named(spec, named):
    with pytest.raises(AgentSpecError, match=named.replace("(", r"\(")) as info:
        resolve_agent(spec)
    assert repr(spec) in str(info.value)


def test_agent_file_that_fails_to_import_says_where_every_time(tmp_path):
    path = tmp_path / "broken_agent.py"
    path.write_text("import os\n\nraise RuntimeError('missing OPENAI_API_KEY')\n\n"
                    "async def solve(session):\n    return 1\n")
    for _ in range(2):  # a second resolve must not find a half-imported module
        with pytest.raises(AgentSpecError, match=r"broken_agent\.py:3.*missing OPENAI_API_KEY"):
            resolve_agent(f"{path}:solve")
    path.write_text("async def solve(:\n")
    with pytest.raises(AgentSpecError, match=r"broken_agent\.py:1.*SyntaxError"):
        resolve_agent(f"{path}:solve")


def test_module_that_raises_on_import_is_an_agent_spec_error(tmp_path, monkeypatch):
    (tmp_path / "raises_on_import_xyz.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AgentSpecError, match="ValueError: bad config"):
        resolve_agent("raises_on_import_xyz:solve")


def test_non_callable_object_is_refused():
    with pytest.raises(AgentSpecError, match="not callable"):
        resolve_agent(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("prompt, answer", [
    ("How many times does the letter 's' appear in: 'Mississippi'? Answer with a number.", "4"),
    ("Compute -7 * 6. Answer with an integer.", "-42"),
    ("Reverse the word 'ribbon3'. Answer with the reversed word only.", "3nobbir"),
    ("Sort these numbers in ascending order, comma-separated: 5, 3, 10", "3, 5, 10"),
    ("Riddle: What has keys but cannot open locks? Answer with one word.", "I don't know"),
])
def test_rule_agent_reads_the_demo_prompts(prompt, answer):
    s = session(prompt)
    assert asyncio.run(rule_agent(s)) == answer
    assert [step["kind"] for step in s.steps] == (["give_up"] if answer == "I don't know" else [])
