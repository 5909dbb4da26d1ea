"""Serve a local index over HTTP to every rollout worker.

    python -m openrlhf_tapo.cli.serve_search --index DIR [--host 127.0.0.1 --port 8000 --token-env VAR]

Binds loopback by default. With --token-env VAR, clients must send `Authorization: Bearer $VAR` (the agent's
`tools.backend.token_env` names the same variable). A non-loopback --host requires a token unless
--allow-remote-without-token is given. See docs/tools.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from openrlhf_tapo.search.http_service import ServiceConfig, start_service
from openrlhf_tapo.search.local_index import LocalIndex


async def _serve(index: LocalIndex, config: ServiceConfig, allow_remote: bool) -> None:
    runner, port = await start_service(index, config, allow_remote_without_token=allow_remote)
    print(f"serving {index.directory} on http://{config.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    defaults = ServiceConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True, help="index directory (from openrlhf_tapo.cli.build_index)")
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--token-env", help="environment variable holding the bearer token clients must send")
    parser.add_argument("--max-concurrency", type=int, default=defaults.max_concurrency)
    parser.add_argument("--max-top-k", type=int, default=defaults.max_top_k)
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--allow-remote-without-token", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            print(f"error: --token-env {args.token_env}: the variable is unset or empty", file=sys.stderr)
            return 2
    config = ServiceConfig(
        host=args.host,
        port=args.port,
        token=token,
        max_concurrency=args.max_concurrency,
        max_top_k=args.max_top_k,
        max_body_bytes=args.max_body_bytes,
    )
    try:
        index = LocalIndex.load(args.index)
        asyncio.run(_serve(index, config, args.allow_remote_without_token))
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
