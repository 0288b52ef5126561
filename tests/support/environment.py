"""The hermetic test environment: which variables tests never see, and the
values that keep the cloud SDKs from finding a developer's own credentials.

Applied for the whole session by the root conftest (when it is imported,
before collection) and again before each test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OTEL_: a developer's collector must not receive the tests' spans.
SCRUBBED_PREFIXES = ("IMAGE_SERVICE_", "AWS_", "GOOGLE_", "OTEL_")
PROXY_VARIABLES = frozenset(
    name
    for upper in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
    for name in (upper, upper.lower())
)
# Where the SDKs would otherwise find a developer's own credentials and
# settings (~/.aws, ~/.config/gcloud); nothing exists under this path.
_NOWHERE = Path("/nonexistent/image-service-tests")
HERMETIC_VALUES = {
    "AWS_CONFIG_FILE": str(_NOWHERE / "aws-config"),
    "AWS_SHARED_CREDENTIALS_FILE": str(_NOWHERE / "aws-credentials"),
    # botocore and google-auth would otherwise ask the cloud's metadata
    # server for credentials.
    "AWS_EC2_METADATA_DISABLED": "true",
    "CLOUDSDK_CONFIG": str(_NOWHERE / "gcloud"),
    "NO_GCE_CHECK": "true",
    # The server's metrics port on a free loopback port, like the tests'
    # gRPC ports: the default (9464) would collide between services that a
    # test, or concurrent test runs on one machine, start.
    "IMAGE_SERVICE_METRICS_HOST": "127.0.0.1",
    "IMAGE_SERVICE_METRICS_PORT": "0",
}


def scrubbed(name: str) -> bool:
    """Whether the hermetic environment drops the variable `name`."""
    return name.startswith(SCRUBBED_PREFIXES) or name in PROXY_VARIABLES


def make_hermetic(patch: pytest.MonkeyPatch) -> None:
    """Drop every scrubbed variable from `os.environ` and set
    `HERMETIC_VALUES`, through `patch` (so `patch.undo()` restores them)."""
    for name in [name for name in os.environ if scrubbed(name)]:
        patch.delenv(name)
    for name, value in HERMETIC_VALUES.items():
        patch.setenv(name, value)
