"""The `image-service` command line.

`main` builds one argparse parser whose subcommands come from four modules:
`server.cli.run` (the server side: `serve`, `sandbox`, `dev`),
`server.cli.rest_command` (the REST sidecar: `rest`), `server.cli.client`
(calls to a running service: `generate`, `edit`, `models`, `get`) and
`server.cli.keys_command` (API keys: `keys create|list|revoke|usage`). Each
module's `register(subparsers)` adds its commands and sets a handler on each
with `set_defaults(func=handler)`. A handler takes
the parsed `argparse.Namespace` and returns the exit code, either directly
or as a coroutine, which `main` runs to completion on a uvloop event loop.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeAlias

import uvloop

from server.cli import client, keys_command, rest_command, run

Handler: TypeAlias = Callable[[argparse.Namespace], int | Coroutine[Any, Any, int | None] | None]
"""What `set_defaults(func=...)` must be: None counts as exit code 0."""

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The `image-service` parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="image-service",
        description="chuizi.image.v1.ImageService: run the service or call it.",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    run.register(subparsers)
    rest_command.register(subparsers)
    client.register(subparsers)
    keys_command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: `sys.argv[1:]`), run the command, return its exit code.

    argparse itself exits (code 2) on a bad command line and after `--help`.
    Ctrl-C ends the command with 130, the shell's code for SIGINT.
    """
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    try:
        outcome = handler(args)
        # uvloop (libuv) rather than asyncio's own loop: the same asyncio API,
        # with the loop, its transports and its callbacks in C; BENCHMARKS.md
        # (fix 28) has what it saves per request.
        result = uvloop.run(outcome) if isinstance(outcome, Coroutine) else outcome
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0 if result is None else int(result)
