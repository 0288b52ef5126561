"""Host and port as addresses and URLs: an IPv6 literal goes in brackets.

One rule for every listener that prints or binds an address (the gRPC
server, the ASGI servers, the sandbox), since the default host is `::`.
"""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets (`[::]:50051`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(host: str, port: int) -> str:
    """`http://host:port` (`http://[::1]:8080` for an IPv6 literal)."""
    return f"http://{host_port(host, port)}"
