"""The driver's schedulers, split by concern. `hud_ray.scheduler.Scheduler` is the run loop
(dispatch and harvest); the mixins here hold what it decides about:

- `intake`: where new rollouts come from (the task stream, resume skips, warm matching);
- `outcomes`: what a finished row means (write, retry with back-off, abort, error budget);
- `deadlines`: rollouts past their deadline and the worker's watch probe;
- `workers`: worker actors: creation, replacement after a death, reaping, teardown.
"""
