"""Shared names for the tests that run R2 storage against moto's S3 server.

The fixtures themselves live in `tests/storage/r2/conftest.py`.
"""

from __future__ import annotations

from collections.abc import Callable

from server.storage.r2 import R2Store

# Credentials that tests check never leak into errors or logs.
ACCESS_KEY_ID = "AKIDTESTR2KEYID00001"
SECRET_ACCESS_KEY = "r2-test-secret-do-not-leak-7f3a9c"
PUBLIC_BASE_URL = "https://img.example.test"

# `make_store(endpoint_url, **overrides)`: an R2Store on the test's bucket.
StoreFactory = Callable[..., R2Store]
