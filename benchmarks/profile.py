"""Profile the service under one benchmark cell's load with py-spy.

    python -m benchmarks.profile rest-b64 --latency 0 --noise 4mb -n 1 -c 8 --seconds 10

Starts the stack as `make bench` does (its `bare` configuration unless
`--config production`), drives the cell's load, and samples
the gRPC server and the REST sidecar with `py-spy record` (native frames
included, idle threads excluded) meanwhile. Prints the functions that
were on CPU most often in each process, by self time and by total time,
and keeps the collapsed stacks (`server.txt`, `sidecar.txt`) in the work
directory for flame graphs. Idle thread-pool workers waiting on their queue
(`_worker (concurrent/futures/thread.py:81)`) and grpc's polling threads
(`Thread.run`) still show up: ignore them. Needs `py-spy` (a dev
dependency, installed by `make install`) and permission to ptrace the
children (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from benchmarks.clients import prompt
from benchmarks.load import closed_loop
from benchmarks.processes import Stack
from benchmarks.run import CONFIGS, TRACED_CONFIGS, Service


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that name one cell of the grid: path, latency, PNG size, n, c."""
    parser.add_argument("path", choices=["grpc-url", "grpc-inline", "rest-url", "rest-b64"])
    parser.add_argument("--latency", type=int, default=0, help="upstream latency, ms")
    parser.add_argument("--noise", default="3mb", help="PNG size, e.g. 1mb")
    parser.add_argument("-n", type=int, default=1)
    parser.add_argument("-c", type=int, default=8, help="concurrency")


def summarise(collapsed: Path, top: int) -> str:
    """The `top` frames by self and by inclusive samples in a collapsed-stack file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "  (no samples)"
    lines = [f"  {total} samples; self:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(lines)


async def profile(args: argparse.Namespace, workdir: Path) -> None:
    py_spy: str = args.py_spy
    stack = Stack(
        workdir,
        workdir / "media",
        noise_sizes=(args.noise,),
        service_env=CONFIGS[args.config],
        trace_to_emulator=args.config in TRACED_CONFIGS,
    )
    async with stack:
        service = Service(args.config, stack)
        try:
            call = service.call_for(args.path, prompt(args.noise, args.latency / 1000), args.n)
            outputs = {
                "server": workdir / "server.txt",
                "sidecar": workdir / "sidecar.txt",
            }
            spies = []

            async def start_spies() -> None:
                for (_name, out), pid in zip(outputs.items(), stack.service_pids(), strict=True):
                    spies.append(
                        await asyncio.create_subprocess_exec(
                            py_spy,
                            "record",
                            "--pid",
                            str(pid),
                            "--duration",
                            str(int(args.seconds)),
                            "--rate",
                            "250",
                            *(["--native"] if args.native else []),
                            "--format",
                            "raw",
                            "--output",
                            str(out),
                            stdout=asyncio.subprocess.DEVNULL,
                            stderr=asyncio.subprocess.DEVNULL,
                        )
                    )

            # Warm up once, then load for the spies' whole duration.
            await closed_loop(call, concurrency=args.c, duration_s=1, max_requests=1000)
            await start_spies()
            result = await closed_loop(
                call,
                concurrency=args.c,
                duration_s=args.seconds + 1,
                max_requests=100_000,
                warmup=False,
            )
            for spy in spies:
                await spy.wait()
            print(f"{result.throughput:.1f} req/s, errors {dict(result.errors)}")
            for name, out in outputs.items():
                print(f"{name} ({out}):")
                print(summarise(out, args.top) if out.exists() else "  (py-spy wrote nothing)")
        finally:
            await service.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    add_cell_arguments(parser)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="bare")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--native", action="store_true", help="sample C frames too")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    args.py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(args.py_spy).exists():
        sys.exit("py-spy is not installed: run make install (it is a dev dependency)")
    with tempfile.TemporaryDirectory(prefix="image-profile-", dir="/dev/shm") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        asyncio.run(profile(args, workdir))


if __name__ == "__main__":
    main()
