"""A configured Vertex backend adds no google-cloud-aiplatform import to start-up."""

from __future__ import annotations

import subprocess
import sys

BUILD_AND_REPORT = """
import sys
from server.providers.vertex_imagen.backend import VertexImagenBackend
VertexImagenBackend(project="p", api_endpoint="http://127.0.0.1:9")
print(sorted(name for name in sys.modules if name.startswith("google.cloud.aiplatform")))
"""


def test_building_the_backend_leaves_the_sdk_unimported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BUILD_AND_REPORT],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]", done.stdout
