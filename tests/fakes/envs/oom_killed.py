"""An env whose server process is SIGKILLed mid-grade, as the kernel's OOM killer would."""

import os
import signal

from hud_ray.envkit import Environment

env = Environment(name="oom")


@env.template("work")
async def work(i: int = 0):
    yield "Say anything."
    os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer does not negotiate
    yield 1.0
