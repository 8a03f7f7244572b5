"""`modal`: one Modal Sandbox per rollout, reached through a token gate.

    hud-ray run tasks.jsonl --provider modal --provider-opt image=myorg/env:latest

Per rollout: `Sandbox.create` with a deterministic name (a retried create re-attaches),
tags = the run's labels, `timeout` from the rollout deadline, resources from the task.
The sandbox's entrypoint is the token gate (providers/gate.py, shipped as `python3 -c`),
which starts the env server on 127.0.0.1 and lets through only connections that open with
the per-sandbox secret. `ready()` returns `tcp://host:port` of the tunnel plus that first
frame as `Endpoint.preamble`, after a wire `hello` answered through the gate.

Package layout: options.py (options, spec → SDK arguments), sdk.py (SDK seam, error
policy), provider.py (lifecycle). Inside it, `import modal`
is absolute and always means the SDK.
"""

from .options import ModalOptions
from .provider import ModalProvider

__all__ = ["ModalOptions", "ModalProvider"]
