"""The OpenAI-compatible REST sidecar: a gRPC client of the image service.

`create_app(channel, settings)` is the Starlette app; `rest_routes` gives
just its `/v1` routes for mounting beside other routes; `open_channel`
makes the one long-lived channel they share. See docs/rest.md.
"""

from server.rest.app import create_app, health_routes, rest_routes
from server.rest.upstream import open_channel

__all__ = ["create_app", "health_routes", "open_channel", "rest_routes"]
