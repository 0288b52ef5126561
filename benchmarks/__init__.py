"""`make bench`: what the service adds on top of its upstream, measured.

`python -m benchmarks.run` starts the FLUX sandbox emulator, the gRPC
service and the REST sidecar as three separate processes, drives them with
a closed-loop async client from this process over real loopback sockets,
reads the service processes' CPU time and peak RSS from /proc, and prints
one table. See BENCHMARKS.md for what the figures mean.

Modules:

- `run`: the command line and the plan of cells (the entry point).
- `processes`: starting and stopping the three processes.
- `emulator`: the emulator process (`python -m benchmarks.emulator`).
- `clients`: the calls the load driver makes: gRPC, REST, direct to the emulator.
- `load`: the closed-loop driver and latency percentiles.
- `procstat`: CPU seconds and RSS of another process, from /proc.
- `report`: the result table as Markdown.
"""
