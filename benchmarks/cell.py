"""One benchmark cell's cost, split: user and system CPU, page faults, peak RSS.

    python -m benchmarks.cell grpc-url --latency 500 --noise 3mb -c 32 --seconds 15
    python -m benchmarks.cell rest-b64 --noise 4mb -c 8 --service-env MALLOC_TRIM_THRESHOLD_=0
    python -m benchmarks.cell grpc-url --latency 500 --noise 3mb -c 32 --server floor-lean

Starts the stack as `make bench` does (its `bare` configuration unless
`--config production`, which as in `make bench` presents an API key checked
against a redis-server of its own, with the per-key and per-provider limits
counted there), drives the cell's closed loop for
`--warmup-seconds` and then `--seconds`, and prints for the gRPC server and the REST
sidecar: CPU per completed request as user and system time
(`/proc/<pid>/stat`, clock ticks), minor page faults per request, and peak
RSS over the window. The split is what `make bench`'s single CPU figure
hides: system time is where fresh memory (page faults, tmpfs pages for the
stored images) and socket copies go. For an A/B, run it alternately for
the two variants (`--service-env` sets a variable for the server and
sidecar only) and compare the spread, not one pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

from benchmarks.clients import prompt
from benchmarks.floor import MODES as FLOOR_MODES
from benchmarks.load import closed_loop
from benchmarks.processes import Stack
from benchmarks.procstat import cpu_split, peak_rss_mib, reset_peak
from benchmarks.profile import add_cell_arguments
from benchmarks.run import CONFIGS, TRACED_CONFIGS, Service, keys_for

# `--server`: the service, or `benchmarks.floor` doing the same work bare.
SERVERS: dict[str, tuple[str, ...]] = {
    "service": (),
    **{
        f"floor-{mode}": (sys.executable, "-m", "benchmarks.floor", "--mode", mode)
        for mode in FLOOR_MODES
    },
}


async def measure(args: argparse.Namespace, workdir: Path) -> str:
    async with contextlib.AsyncExitStack() as stacks:
        extra, api_key = await keys_for(args.config, workdir, stacks)
        env = {
            **CONFIGS[args.config],
            **extra,
            **dict(kv.split("=", 1) for kv in args.service_env),
        }
        stack = Stack(
            workdir,
            workdir / "media",
            noise_sizes=(args.noise,),
            service_env=env,
            trace_to_emulator=args.config in TRACED_CONFIGS,
            server_command=SERVERS[args.server],
        )
        await stacks.enter_async_context(stack)
        return await _measure(args, Service(args.config, stack, api_key))


async def _measure(args: argparse.Namespace, service: Service) -> str:
    """Drive the cell's closed loop on `service` and report the window's costs."""
    stack = service.stack
    try:
        call = service.call_for(args.path, prompt(args.noise, args.latency / 1000), args.n)
        await closed_loop(
            call, concurrency=args.c, duration_s=args.warmup_seconds, max_requests=1_000_000
        )
        pids = stack.service_pids()
        for pid in pids:
            reset_peak(pid)
        before = [cpu_split(pid) for pid in pids]
        result = await closed_loop(
            call,
            concurrency=args.c,
            duration_s=args.seconds,
            max_requests=1_000_000,
            warmup=False,
        )
        after = [cpu_split(pid) for pid in pids]
        peaks = [peak_rss_mib(pid) for pid in pids]
    finally:
        await service.close()
    done = max(result.completed, 1)
    lines = [
        f"{args.path} {args.noise} n={args.n} c={args.c} {args.latency} ms [{args.config}"
        f"{'' if args.server == 'service' else ', ' + args.server}"
        f"{', API key in Redis' if service.api_key else ''}]"
        f"{' ' + ' '.join(args.service_env) if args.service_env else ''}: "
        f"{result.completed} requests in {result.elapsed:.1f} s, errors {dict(result.errors)}"
    ]
    for name, start, end, peak in zip(("server", "sidecar"), before, after, peaks, strict=True):
        user = (end.user_s - start.user_s) * 1000 / done
        system = (end.system_s - start.system_s) * 1000 / done
        faults = (end.minor_faults - start.minor_faults) / done
        lines.append(
            f"  {name}: {user + system:.2f} ms CPU per request (user {user:.2f}, "
            f"system {system:.2f}), {faults:.0f} minor faults per request, "
            f"peak RSS {peak:.0f} MiB"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cell", description=__doc__)
    add_cell_arguments(parser)
    parser.add_argument("--seconds", type=float, default=15, help="the measured window")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=2,
        help="load before the window (a long one measures a server in steady state)",
    )
    parser.add_argument("--config", choices=sorted(CONFIGS), default="bare")
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server and sidecar (repeatable)",
    )
    parser.add_argument(
        "--server",
        choices=sorted(SERVERS),
        default="service",
        help="what serves gRPC: the service, or benchmarks.floor doing the same work "
        "with nothing but its parts (grpc-url, bare, n=1 only)",
    )
    args = parser.parse_args()
    if args.server != "service" and (args.path, args.config, args.n) != ("grpc-url", "bare", 1):
        parser.error("a floor server answers only grpc-url, bare, n=1")
    # The stored images go to tmpfs, as in `make bench`, and are removed after.
    with tempfile.TemporaryDirectory(prefix="image-cell-", dir="/dev/shm") as tmp:
        print(asyncio.run(measure(args, Path(tmp))))


if __name__ == "__main__":
    main()
