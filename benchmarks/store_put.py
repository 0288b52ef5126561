"""CPU per image upload of the R2 store, over HTTPS as to R2.

    python -m benchmarks.store_put [--image-bytes 3145728] [-c 8] [--requests 20]
        [--sign-body] [--http]

Measures what storing one image costs the service's side alone: a child
process runs moto's S3 server behind TLS (a throwaway test CA made with
trustme), and this process uploads `c` concurrent closed loops of images
(incompressible bytes) through `server.storage.r2.R2Store`, as the
orchestrator does. Its own CPU time (`getrusage`, user + system, the store's
threads included) divided by the uploads is the figure; moto's CPU is in the
child and not counted.

- `--sign-body`: hash each body for the signature, as botocore does by
  default over HTTPS (and as `R2Store` did before fix 29 in BENCHMARKS.md);
- `--http`: plain HTTP instead (no TLS; botocore then always hashes the body).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import socket
import tempfile
import time
import warnings
from typing import Any

import boto3
import trustme
import uvicorn
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from uvicorn.middleware.wsgi import WSGIMiddleware  # type: ignore[attr-defined]

from benchmarks.processes import forked_server
from server.allocator import keep_freed_buffers
from server.storage.r2 import R2Store

_BUCKET = "bench-images"
_KEY_ID = "bench-key-id"
_SECRET = "bench-secret"  # moto checks nothing; never a real credential


def _serve_forever(cert_pem: str | None, port_pipe: int) -> None:
    # Under uvicorn, not moto's own werkzeug server: werkzeug closes every
    # connection after one answer, and a TLS handshake per upload is not
    # what a pooled client sees from R2.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # uvicorn's WSGI adapter
        app = WSGIMiddleware(DomainDispatcherApplication(create_backend_app))
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ssl_certfile=cert_pem,
        ssl_keyfile=cert_pem,
    )
    os.write(port_pipe, str(sock.getsockname()[1]).encode())
    uvicorn.Server(config).run(sockets=[sock])


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    endpoint_url: str, image_bytes: int, concurrency: int, requests: int, sign_body: bool
) -> float:
    """CPU ms per upload over `requests` per loop, after a warm-up of 2 each."""
    store = R2Store(
        endpoint_url=endpoint_url,
        bucket=_BUCKET,
        access_key_id=_KEY_ID,
        secret_access_key=_SECRET,
        public_base_url="https://img.example.test",
        max_connections=concurrency,
    )
    if sign_body:
        # The store's client, told what botocore's default is: a benchmark
        # switch only, so both sides run in one process on the same code.
        config: Any = store._client.meta.config
        config.s3["payload_signing_enabled"] = True
    image = os.urandom(image_bytes)
    try:

        async def loop(worker: int, count: int) -> None:
            for index in range(count):
                await store.put(f"images/bench-{worker}-{index}.png", image, "image/png")

        await asyncio.gather(*(loop(w, 2) for w in range(concurrency)))
        start = _cpu_s()
        await asyncio.gather(*(loop(w, requests) for w in range(concurrency)))
        ms = (_cpu_s() - start) * 1000 / (concurrency * requests)
        if await store.get("images/bench-0-0.png") != image:
            raise RuntimeError("the uploaded image did not come back whole")
        return ms
    finally:
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.store_put", description=__doc__)
    parser.add_argument("--image-bytes", type=int, default=3 * 1024 * 1024)
    parser.add_argument("-c", type=int, default=8, help="concurrent closed loops")
    parser.add_argument("--requests", type=int, default=20, help="measured uploads per loop")
    parser.add_argument("--sign-body", action="store_true", help="botocore's default signing")
    parser.add_argument("--http", action="store_true", help="plain HTTP, no TLS")
    args = parser.parse_args()
    keep_freed_buffers()  # as `image-service serve` does
    with tempfile.TemporaryDirectory(prefix="store-put-") as tmp:
        cert_pem: str | None = None
        if not args.http:
            ca = trustme.CA()
            cert_pem = os.path.join(tmp, "server.pem")
            ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert_pem)
            bundle = os.path.join(tmp, "ca.pem")
            ca.cert_pem.write_to_path(bundle)
            os.environ["AWS_CA_BUNDLE"] = bundle  # read by the store's boto3 session
        with forked_server(functools.partial(_serve_forever, cert_pem)) as port:
            endpoint = f"{'http' if args.http else 'https'}://127.0.0.1:{port}"
            admin = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",  # moto's default region takes no constraint
                aws_access_key_id=_KEY_ID,
                aws_secret_access_key=_SECRET,
            )
            admin.create_bucket(Bucket=_BUCKET)
            admin.close()
            started = time.perf_counter()
            ms = asyncio.run(
                measure(endpoint, args.image_bytes, args.c, args.requests, args.sign_body)
            )
            elapsed = time.perf_counter() - started
    total = args.c * args.requests
    how = "HTTP" if args.http else "HTTPS, body signed" if args.sign_body else "HTTPS"
    print(
        f"R2Store.put over {how}: {ms:.2f} ms CPU per {args.image_bytes:,}-byte image, "
        f"c={args.c}, {total} uploads in {elapsed:.1f} s"
    )


if __name__ == "__main__":
    main()
