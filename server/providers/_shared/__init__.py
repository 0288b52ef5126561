"""Plumbing the backends share, and the only provider code they may import.

- `plugin`: what a backend exports (`BackendPlugin`, its settings base).
- `upstream`: the upstream descriptor, the deadline rule for one attempt,
  safe error codes, blamed fields; for every backend, whatever it speaks.
- `http` (+ `http1`, its HTTP/1.1 transport, and `aiohttp_transport` for
  proxied URLs): the HTTP backends' client and retried call.
- `owned`: a connection object closed only by whoever made it.
- `base64_json`: images inside JSON, coded without copies.
- `limits`: client-side concurrency and rate limits, applied by the registry.
- `azure_images`: what the two Azure AI Foundry routes answer alike.
"""
