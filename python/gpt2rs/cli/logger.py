"""gpt2rs-logger: collect the metrics of one or more gpt2rs-train processes
(started with --logger --logger-server-addr HOST) into TensorBoard logs, one
subdirectory per run, and serve TensorBoard on the client port when the
`tensorboard` command is installed (NNTile's logger/server.py).

    gpt2rs-logger --port 5001 --log-dir logs --client-port 6006
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from ..metrics import DEFAULT_CLIENT_PORT, DEFAULT_SERVER_PORT
from ._common import Formatter, Parser

PROG = "gpt2rs-logger"


def _env_port(*names: str, default: int) -> int:
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            try:
                return int(v)
            except ValueError:
                raise SystemExit(
                    f"{PROG}: error: environment variable {n}={v!r} is not a port number"
                ) from None
    return default


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        formatter_class=Formatter,
        epilog="Environment (flags win): SERVER_PORT / NNTILE_LOGGER_SERVER_PORT, LOG_DIR / NNTILE_LOGGER_SERVER_DIR, "
        "NNTILE_LOGGER_CLIENT_PORT. Every --dashed-option is also accepted as --underscore_option.",
    )
    ap.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface, for trainers on other machines)",
    )
    ap.add_argument(
        "--port",
        type=int,
        default=_env_port("SERVER_PORT", "NNTILE_LOGGER_SERVER_PORT", default=DEFAULT_SERVER_PORT),
        help="TCP port the training processes connect to",
    )
    ap.add_argument(
        "--log-dir",
        default=os.environ.get("LOG_DIR") or os.environ.get("NNTILE_LOGGER_SERVER_DIR") or "logs",
        help="TensorBoard log directory (one subdirectory per run)",
    )
    ap.add_argument(
        "--client-port",
        type=int,
        default=_env_port("NNTILE_LOGGER_CLIENT_PORT", default=DEFAULT_CLIENT_PORT),
        help="port of the TensorBoard web page",
    )
    ap.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start TensorBoard on --client-port if the `tensorboard` command exists",
    )
    ap.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    from ..logger_server import LoggerServer, start_tensorboard

    ap = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    known = set(ap._option_string_actions)
    raw = [
        (t.partition("=")[0].replace("_", "-") + "".join(t.partition("=")[1:]))
        if t.startswith("--") and t.partition("=")[0].replace("_", "-") in known
        else t
        for t in raw
    ]
    args = ap.parse_args(raw)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format=f"{PROG}: %(message)s"
    )
    server = LoggerServer(args.host, args.port, args.log_dir)
    try:
        server.start()
    except OSError as e:
        sys.stderr.write(
            f"{PROG}: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}\n"
        )
        return 1

    def say(text: str) -> None:
        if not args.quiet:
            print(f"{PROG}: {text}", flush=True)

    say(f"listening on {args.host}:{server.port}, writing TensorBoard logs to {args.log_dir}/<run>")
    tb = None
    if args.tensorboard:
        tb = start_tensorboard(args.log_dir, args.client_port)
        if tb is None:
            say(
                "note: `tensorboard` is not installed; "
                f"pip install tensorboard, then tensorboard --logdir {args.log_dir}"
            )
        else:
            say(f"TensorBoard at http://localhost:{args.client_port}")
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        if tb is not None:
            tb.terminate()
            try:
                tb.wait(5)
            except Exception:  # noqa: BLE001 -- any failure here means the same thing
                tb.kill()
    say(f"stopped: {server.messages:,} metrics from {len(server.clients)} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
