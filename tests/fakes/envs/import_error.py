"""An env file whose import raises: envkit must say which file and why."""

print("connecting to the license server", flush=True)
raise RuntimeError("license server unreachable: licensing.internal:443")
