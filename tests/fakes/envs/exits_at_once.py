"""An env file that fails while being imported (the server exits before serving)."""

import sys

print("loading fixtures from /data/fixtures.db", flush=True)
print("fatal: /data/fixtures.db: no such file", file=sys.stderr, flush=True)
sys.exit(3)
