"""Emulators of the upstream image APIs, for local runs and tests.

They speak each provider's real wire protocol (paths, auth, bodies, error
shapes), render a real image of the requested size showing the prompt, and
take programmable faults (`server.sandbox.faults`). `SandboxServer` serves
them all on one in-process HTTP server. Nothing here imports the providers.
"""
