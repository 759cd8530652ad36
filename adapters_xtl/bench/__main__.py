"""`python -m adapters_xtl.bench --worker CONFIG.json RESULT.json`: one configuration in a fresh
process (what `run_isolated` spawns), so its peak memory is its own."""

import sys

from .run import _worker_main

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2], sys.argv[3]))
    print("usage: python -m adapters_xtl.bench --worker CONFIG.json RESULT.json (use `xtl bench`)", file=sys.stderr)
    sys.exit(2)
