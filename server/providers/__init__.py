"""Provider backends: one module per upstream, each implementing
`server.domain.ports.ImageBackend`, plus the registry that builds them
from settings. Backends share `server.providers.http`; they never import
each other or the sandbox.
"""
