"""Command line: ``python -m airflow_provider_bgremoval.sandbox`` / ``bgremoval-sandbox``.

The first line printed is always ``bgremoval-sandbox: serving on http://HOST:PORT`` so scripts (the
demo) can read the URL when ``--port 0`` picks a free port; ``--url-file`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from airflow_provider_bgremoval.sandbox.app import create_app
from airflow_provider_bgremoval.sandbox.config import (
    DEFAULT_PIXELCUT_KEY,
    DEFAULT_PIXIAN_ID,
    DEFAULT_PIXIAN_SECRET,
    DEFAULT_POOF_KEY,
    ConfigError,
    SandboxConfig,
)
from airflow_provider_bgremoval.sandbox.testing import free_socket


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="bgremoval-sandbox",
        description="Offline emulator of the Pixelcut, Pixian.AI and Poof background-removal APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; default 8765)")
    parser.add_argument("--config", type=Path, help="JSON configuration file (keys, balances, costs, faults)")
    parser.add_argument("--seed", type=int, help="seed for fault injection (overrides the config)")
    parser.add_argument("--url-file", type=Path, help="write the base URL to this file once listening")
    parser.add_argument("--log-level", default="info", help="log level (default info)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox until interrupted.

    :param argv: arguments (default: ``sys.argv[1:]``)
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = SandboxConfig.from_file(args.config) if args.config else SandboxConfig()
    except (OSError, ValueError, ConfigError) as exc:
        print(f"bgremoval-sandbox: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.seed is not None:
        config.seed = args.seed
    sock = free_socket(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}"
    if args.url_file:
        args.url_file.write_text(url + "\n", encoding="utf-8")
    print(f"bgremoval-sandbox: serving on {url}", flush=True)
    print(f"  Pixelcut  {url}/v1/...        X-API-KEY: {DEFAULT_PIXELCUT_KEY}")
    print(f"  Pixian    {url}/api/v2/...    Basic {DEFAULT_PIXIAN_ID}:{DEFAULT_PIXIAN_SECRET}")
    print(f"  Poof      {url}/v1            x-api-key: {DEFAULT_POOF_KEY}")
    print(f"  Admin     {url}/_sandbox/state", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            log_level=args.log_level.lower(),
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
