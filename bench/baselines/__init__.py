"""What a user would write instead of hud_ray, each run on the same workload:

- `hud_style`: one process, `asyncio.Semaphore` + `gather` over `run_rollout` (hud's own
  `Taskset.run` is exactly this shape), results written when the gather returns.
- `ray_data`: `ray.data.from_items(...).map_batches(actor class, ActorPoolStrategy)`; each
  actor runs its batch's rollouts concurrently; `write_parquet`.
- `actor_per_sandbox`: one Ray actor per sandbox slot (the card's literal shape), a
  `ray.wait` window keeping one rollout in flight per actor.
- `raw_client`: no framework at all — a bare asyncio client doing the full protocol
  exchange against the sim's stdlib server: the ceiling for B1.
- `hud_taskset`: hud 0.6.21's real `Taskset.run` (runs in hud's own venv; for B5).
"""
