"""A hud env with an ssh workspace, as hud's `blank` scaffold writes one: the agent gets a
shell (hud's agents: the `bash` tool) in a fresh directory, and the grade reads the file
the agent wrote there."""

import tempfile
from pathlib import Path

from hud.environment import Environment

env = Environment(name="workspace")

WORKSPACE = Path(tempfile.mkdtemp(prefix="hud-ray-ws-"))
ws = env.workspace(WORKSPACE)


@env.template(id="write_file")
async def write_file(text: str, name: str):
    answer = yield (f"Use bash to write the text {text} into the file {name} in the "
                    "workspace, then reply with the file's content.")
    written = (WORKSPACE / name).read_text() if (WORKSPACE / name).is_file() else None
    yield 1.0 if written == text and (answer or "").strip() == text else 0.0
