"""Tasks for the tools env, as hud's scaffold writes them (`hud eval tasks.py <agent>`)."""

from env import add_task, chain_task, half_credit, lookup_task

tasks = [
    add_task(a=2, b=3),
    add_task(a=40, b=2),
    chain_task(a=1, b=2, c=3),
    lookup_task(key="k3"),
    lookup_task(key="k7"),
]

# A row graded by an agent-less verifier: the verifier's reward is the grade of record.
verified = add_task(a=5, b=5).model_copy(
    update={"slug": "add-verified", "verifier": half_credit(weight=0.5)})
tasks.append(verified)
