"""``python -m tests.pubsub_emulator [--host H] [--port P]``: serve until SIGTERM/SIGINT.

Prints ``PUBSUB_EMULATOR_HOST=host:port`` on the first line of stdout once it is listening.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tests.pubsub_emulator.server import PubSubStandIn


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pubsub_emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--max-pull-wait", type=float, default=1.0, help="seconds an idle unary Pull waits"
    )
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = PubSubStandIn(args.host, args.port, max_pull_wait=args.max_pull_wait).start()
    print(f"PUBSUB_EMULATOR_HOST={server.host}", flush=True)
    try:
        done.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
