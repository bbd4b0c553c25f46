"""python -m loopsite.standin --host 127.0.0.1 --port 8765 [--delay SECONDS] [--fault MODE] [--probe-file PATH]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .faults import FAULTS
from .server import make_server

DELAY_ENV = "LOOPSITE_STANDIN_DELAY"
PROBE_FILE_ENV = "LOOPSITE_STANDIN_PROBE_FILE"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loopsite.standin",
                                     description="Loopsite's offline, deterministic OpenAI-compatible stand-in model.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--delay", type=float, default=None,
                        help=f"seconds to wait before each model answer (default: ${DELAY_ENV} or 0)")
    parser.add_argument("--fault", choices=FAULTS, default=None,
                        help="answer wrongly on purpose, for tests (see loopsite/standin/faults.py)")
    parser.add_argument("--probe-file", default=os.environ.get(PROBE_FILE_ENV) or None,
                        help="shell commands (one per line) the analyst runs first in every agent run, "
                             f"to look around inside the agent's jail (default: ${PROBE_FILE_ENV})")
    args = parser.parse_args(argv)
    probes: tuple[str, ...] = ()
    if args.probe_file:
        with open(args.probe_file, encoding="utf-8") as handle:
            probes = tuple(line.rstrip("\n") for line in handle if line.strip())
    delay = args.delay if args.delay is not None else float(os.environ.get(DELAY_ENV, "0") or 0)

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s standin %(message)s")
    server = make_server(args.host, args.port, delay=delay, fault=args.fault, probe_commands=probes)
    fault = f", fault {args.fault}" if args.fault else ""
    fault += f", {len(probes)} probe command(s) from {args.probe_file}" if probes else ""
    print(f"loopsite stand-in model listening on {server.base_url} (delay {delay:g}s{fault})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
