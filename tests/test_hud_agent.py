"""hud Agents through `hud_ray.agents.hud_agent`, on the demo env, through `run_rollout`.

hud is not installed in hud_ray's venv, so the hud side runs as a script under hud's python
(`HUD_PYTHON`, else `.venv-hud/bin/python` from `make hud-venv`) importing hud_ray from
this checkout; it prints one JSON line per rollout and the assertions are made here.
Without a hud python the hud tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hud_ray.agents import AgentSpecError, resolve_agent

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo"


def _hud_python() -> str | None:
    """$HUD_PYTHON, else this interpreter when hud is importable in it (one install)."""
    explicit = os.environ.get("HUD_PYTHON")
    if explicit:
        return explicit
    return sys.executable if _hud_in_this_venv() else None


def _hud_in_this_venv() -> bool:
    try:
        import hud  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def test_hud_spec_without_hud_names_the_extra() -> None:
    if _hud_in_this_venv():
        pytest.skip("hud is importable here; this checks the error a hud-less install gives")
    with pytest.raises(AgentSpecError, match=r"hud:hud\.agents\.openai_compatible:.*hud-ray\[hud\]"):
        resolve_agent("hud:hud.agents.openai_compatible:OpenAIChatAgent")


HUD_SIDE = r'''
import asyncio, http.server, json, os, pickle, re, secrets, socket, subprocess, sys, threading
from urllib.parse import urlsplit

os.environ["HUD_API_KEY"] = ""  # offline: hud reports nothing anywhere
os.environ.pop("HUD_TELEMETRY_LOCAL_DIR", None)

from hud.agents.base import Agent
from hud.agents.types import AgentConfig
from hud.types import Step

from hud_ray.agents import resolve_agent
from hud_ray.agents.hud_agent import HudAgentAdapter
from hud_ray.rollout import RolloutConfig, run_rollout
from hud_ray.tasks import Rollout, Task
from providers import Endpoint, get_provider
from providers.attach import AttachProvider
from providers.gate import frame

HERE = os.path.abspath(__file__)
DEMO = sys.argv[1]
ROWS = [json.loads(line) for line in open(os.path.join(DEMO, "tasks.jsonl")) if line.strip()]
FIRST = {}
for row in ROWS:
    FIRST.setdefault(row["id"], row)


def solve_text(text: str) -> str:
    if m := re.search(r"letter '(.)' appear in: '(.*)'\?", text):
        return str(m.group(2).lower().count(m.group(1).lower()))
    if m := re.search(r"Compute (-?\d+) ([+\-*]) (-?\d+)\.", text):
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        return str({"+": a + b, "-": a - b, "*": a * b}[op])
    if m := re.search(r"Reverse the word '([^']*)'", text):
        return m.group(1)[::-1]
    if m := re.search(r"comma-separated: (.*)$", text):
        return ", ".join(str(n) for n in sorted(int(x) for x in m.group(1).split(",")))
    return "no idea"


async def solve(run) -> str:
    text = run.prompt_text
    if m := re.search(r"send '(GET \S+)'", text):
        # hud's own capability route: binding() is a local forwarder hud's client opened.
        cap = run.client.binding("kv")
        url = urlsplit(cap.url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        writer.write(m.group(1).encode() + b"\n")
        await writer.drain()
        value = (await reader.readline()).decode().strip()
        writer.close()
        await writer.wait_closed()
        return value
    return solve_text(text)


class DemoSolver(Agent):
    async def __call__(self, run) -> None:
        run.record(Step(source="system", extra={"saw_task": run.task_id}))
        run.trace.content = await solve(run)


class WrongSolver(Agent):
    async def __call__(self, run) -> None:
        run.trace.content = "wrong"


def make_solver(wrong=False):
    return WrongSolver() if wrong else DemoSolver()


class RaisingAgent(Agent):
    async def __call__(self, run) -> None:
        raise RuntimeError("model endpoint refused the connection")


class ErrorTraceAgent(Agent):
    """Like a ToolAgent whose model call failed: it catches, marks the trace, returns."""

    async def __call__(self, run) -> None:
        run.trace.content = await solve(run)
        run.trace.status = "error"
        run.record(Step(source="system", error="model endpoint returned 503"))


class SlowAgent(Agent):
    async def __call__(self, run) -> None:
        await asyncio.sleep(30)


class FakeModel(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions that answers the demo's prompts."""

    prompts = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else "".join(
            part.get("text", "") for part in content)
        FakeModel.prompts.append(text)
        data = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": solve_text(text)}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def make_chat_agent(base_url):
    """A configured hud agent behind a factory, the way a spec string can name one."""
    from hud.agents.openai_compatible import OpenAIChatAgent
    from hud.agents.types import OpenAIChatConfig
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0)
    return OpenAIChatAgent(OpenAIChatConfig(model="fake-model", model_client=client))


class GatedAttach(AttachProvider):
    """An env behind hud_ray's token gate: every connection must open with the secret."""

    name = "gated"

    def __init__(self, preamble: bytes, **options) -> None:
        super().__init__(**options)
        self.preamble = preamble

    async def ready(self, handle, timeout_s):
        return Endpoint(url=self.options.url, preamble=self.preamble)


def emit(case, row, **extra):
    steps = row.steps
    print(json.dumps({
        "case": case, "template": row.template_id, "status": row.status.value,
        "reward": row.reward, "answer": row.answer, "agent": row.agent,
        "error_type": row.error_type, "error_message": row.error_message,
        "step_kinds": [s["kind"] for s in steps],
        "step_contents": [s["step"].get("content") for s in steps if s["kind"] == "hud"],
        "saw_task": [s["step"].get("extra", {}).get("saw_task") for s in steps
                     if s["kind"] == "hud"],
        **extra,
    }), flush=True)


async def one(case, provider, agent, row, key=""):
    task = Task.model_validate(row)
    result = await run_rollout(Rollout(task=task), agent, provider,
                               RolloutConfig(run_id=f"hudtest-{case}{key}", deadline_s=60))
    emit(case, result)


async def main():
    local = get_provider("local", env_file=os.path.join(DEMO, "env.py"))
    spec_agent = resolve_agent(f"hud:{HERE}:DemoSolver")
    shipped = pickle.loads(pickle.dumps(spec_agent))  # what Ray does to reach a worker
    no_timeout = dict(FIRST["arith"])
    no_timeout.pop("agent_config")
    model = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeModel)
    threading.Thread(target=model.serve_forever, daemon=True).start()
    model_url = f"http://127.0.0.1:{model.server_address[1]}/v1"
    with socket.socket() as sock:  # a port nobody listens on: the model endpoint is down
        sock.bind(("127.0.0.1", 0))
        down_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    chat = HudAgentAdapter("hud.agents.openai_compatible:OpenAIChatAgent", model="fake-model",
                           base_url=model_url, api_key="test-key")
    jobs = [one("solver", local, spec_agent, row) for row in FIRST.values()]
    jobs += [
        one("pickled", local, shipped, FIRST["kv_lookup"]),
        one("factory", local, HudAgentAdapter(f"{HERE}:make_solver", wrong=True), FIRST["count"]),
        one("raising", local, HudAgentAdapter(RaisingAgent()), FIRST["count"]),
        one("error_trace", local, HudAgentAdapter(f"{HERE}:ErrorTraceAgent"), FIRST["reverse"]),
        one("error_graded", local,
            HudAgentAdapter(f"{HERE}:ErrorTraceAgent", grade_errors=True), FIRST["reverse"]),
        one("config_timeout", local,
            HudAgentAdapter(SlowAgent(AgentConfig(timeout_seconds=0.5))), no_timeout),
        *(one("openai_chat", local, chat, FIRST[t]) for t in ("count", "arith", "reverse")),
        one("model_down", local, HudAgentAdapter(f"{HERE}:make_chat_agent", base_url=down_url),
            FIRST["count"]),
    ]
    try:
        await asyncio.gather(*jobs)
        print(json.dumps({"case": "unpickled_agent_built_lazily",
                          "value": shipped._agent is not None}), flush=True)
        print(json.dumps({"case": "model_prompts", "value": FakeModel.prompts}), flush=True)
        print(json.dumps({"case": "chat_repr", "value": repr(chat)}), flush=True)
    finally:
        model.shutdown()
        await local.close()

    # The same agent against an env behind the token gate (a cloud sandbox's only door).
    secret = secrets.token_hex(16)
    gate = subprocess.Popen(
        [sys.executable, "-m", "providers.gate", "--host", "127.0.0.1", "--port", "0", "--",
         sys.executable, "-m", "hud_ray.envkit", os.path.join(DEMO, "env.py"),
         "--host", "127.0.0.1", "--port", "0"],
        env={**os.environ, "HUD_RAY_GATE_SECRET": secret}, stdout=subprocess.PIPE, text=True)
    try:
        port = None
        for line in gate.stdout:
            if line.startswith("HUD_RAY_GATE_PORT="):
                port = int(line.split("=", 1)[1])
                break
        url = f"tcp://127.0.0.1:{port}"
        # Without the secret the gate closes the connection: hud's client alone cannot pass.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'{"jsonrpc":"2.0","id":1,"method":"hello","params":{}}\n')
        await writer.drain()
        print(json.dumps({"case": "gate_without_secret",
                          "value": (await asyncio.wait_for(reader.read(), 10)).decode()}),
              flush=True)
        writer.close()
        gated = GatedAttach(frame(secret), url=url)
        await asyncio.gather(*(one("gated", gated, spec_agent, FIRST[t], key=t)
                               for t in ("kv_lookup", "count")))
    finally:
        gate.terminate()
        gate.wait(10)


if __name__ == "__main__":  # the spec `hud:<this file>:DemoSolver` imports it again
    asyncio.run(main())
'''


@pytest.fixture(scope="module")
def hud_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    python = _hud_python()
    if python is None:
        pytest.skip("no hud python: set HUD_PYTHON or run `make hud-venv`")
    work = tmp_path_factory.mktemp("hud_side")
    script = work / "hud_side.py"
    script.write_text(HUD_SIDE)
    # Module scope runs before the per-test state fixture: give the ledgers a home here.
    env = {**os.environ, "HUD_RAY_STATE_DIR": str(work / "state")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    t0 = time.monotonic()
    proc = subprocess.run([python, str(script), str(DEMO)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    print(f"hud side ran in {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, (
        f"hud side failed under {python} (hud_ray's core deps must be importable there)\n"
        f"{proc.stderr[-4000:]}")
    # Tunnels and gateway connections end cleanly: no task asyncio had to log as cancelled.
    assert "Exception in callback" not in proc.stderr, proc.stderr[-4000:]
    rows: dict[str, list[dict]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows.setdefault(row["case"], []).append(row)
    return rows


@pytest.mark.hud
def test_hud_agent_solves_the_demo(hud_rows: dict[str, list[dict]]) -> None:
    by_template = {r["template"]: r for r in hud_rows["solver"]}
    assert set(by_template) == {"count", "arith", "reverse", "sort", "kv_lookup", "riddle"}
    for template, row in by_template.items():
        assert row["status"] == "ok", row
        assert row["reward"] == (0.0 if template == "riddle" else 1.0), row
        assert row["agent"] == f"hud:{row['agent'].split(':', 1)[1]}"
        assert row["agent"].endswith("hud_side.py:DemoSolver")
        # The agent's own steps reach the steps column; the trace summary follows them.
        assert row["step_kinds"] == ["hud", "hud_trace"], row
        assert row["saw_task"] == [template]
    assert by_template["kv_lookup"]["answer"].startswith("value-")  # through hud's tunnel


@pytest.mark.hud
def test_hud_agent_ships_as_a_spec_and_builds_from_factories(hud_rows) -> None:
    [pickled] = hud_rows["pickled"]
    assert (pickled["status"], pickled["reward"]) == ("ok", 1.0)
    assert hud_rows["unpickled_agent_built_lazily"] == [
        {"case": "unpickled_agent_built_lazily", "value": True}]
    [factory] = hud_rows["factory"]
    assert (factory["status"], factory["reward"], factory["answer"]) == ("ok", 0.0, "wrong")


@pytest.mark.hud
def test_hud_agent_failures_are_agent_errors(hud_rows) -> None:
    [raising] = hud_rows["raising"]
    assert (raising["status"], raising["error_type"]) == ("agent_error", "RuntimeError")
    assert "refused the connection" in raising["error_message"]
    [error_trace] = hud_rows["error_trace"]
    assert (error_trace["status"], error_trace["error_type"]) == ("agent_error", "HudAgentError")
    assert error_trace["error_message"] == "model endpoint returned 503"
    assert error_trace["reward"] is None
    [graded] = hud_rows["error_graded"]  # grade_errors=True: graded as hud's rollout does
    assert (graded["status"], graded["reward"]) == ("ok", 1.0)
    [slow] = hud_rows["config_timeout"]
    assert (slow["status"], slow["error_type"]) == ("agent_error", "HudAgentError")
    assert "config.timeout_seconds=0.5" in slow["error_message"]


@pytest.mark.hud
def test_hud_agent_passes_a_token_gate(hud_rows) -> None:
    assert hud_rows["gate_without_secret"][0]["value"] == ""  # closed, not a byte of reply
    gated = {r["template"]: r for r in hud_rows["gated"]}
    assert {t: (r["status"], r["reward"]) for t, r in gated.items()} == {
        "kv_lookup": ("ok", 1.0), "count": ("ok", 1.0)}


@pytest.mark.hud
def test_hud_openai_chat_agent_against_a_fake_model(hud_rows) -> None:
    """hud's real OpenAIChatAgent (a ToolAgent), configured through the adapter."""
    rows = {r["template"]: r for r in hud_rows["openai_chat"]}
    assert {t: (r["status"], r["reward"]) for t, r in rows.items()} == {
        "count": ("ok", 1.0), "arith": ("ok", 1.0), "reverse": ("ok", 1.0)}
    for row in rows.values():
        assert row["agent"] == "hud:hud.agents.openai_compatible:OpenAIChatAgent"
        assert row["answer"] in row["step_contents"]  # the model's turn is in the steps
    [prompts] = [c["value"] for c in hud_rows["model_prompts"]]
    assert len(prompts) == 3 and any("Reverse the word" in p for p in prompts)
    [shown] = [c["value"] for c in hud_rows["chat_repr"]]
    assert "test-key" not in shown and "127.0.0.1" not in shown  # config never in a repr
    # The model endpoint down: the ToolAgent catches it and marks its trace; that is an
    # agent_error with the agent's own message, not a graded reward of 0.
    [down] = hud_rows["model_down"]
    assert (down["status"], down["error_type"]) == ("agent_error", "HudAgentError")
    assert "Connection error" in down["error_message"], down
