"""One rollout, split by concern; `hud_ray.rollout.RolloutRunner` runs the phases in order.

- `spec`: the rollout's settings, its sandbox's spec and labels;
- `failures`: how a failure is classified (`RolloutFailure`, provider errors);
- `sandbox`: the sandbox's lifecycle: provision, ready, connect, cancel, teardown;
- `task`: the task on the wire: start, agent, grade, verifier;
- `row`: the result row built from how far the rollout got.
"""
