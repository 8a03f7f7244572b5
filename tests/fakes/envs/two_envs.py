"""Two environments in one file: `--env NAME` picks one."""

from hud_ray.envkit import Environment

alpha = Environment("alpha")
beta = Environment("beta")


@alpha.template(id="which")
async def which_alpha():
    answer = yield "alpha"
    yield float(answer == "alpha")


@beta.template(id="which")
async def which_beta():
    answer = yield "beta"
    yield float(answer == "beta")
