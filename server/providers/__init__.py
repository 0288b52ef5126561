"""Provider backends.

Each backend is a package here (`azure_flux`, `vertex_imagen`, ...) whose
`__init__` is its plugin, and which implements `server.domain.ports.ImageBackend`
in its `backend` module. Backends import only the domain and `_shared`, never
each other or the sandbox; `registry` lists them by import path. How to add
one: docs/adding-a-provider.md.
"""
