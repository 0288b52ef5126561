"""Pure-Python core of the image service.

Nothing in this package imports grpc, generated code, httpx or a cloud SDK:
it holds the request and result types, the error hierarchy, the catalogue,
validation and the orchestration that fans calls out to backends and stores
what they return. Backends and blob stores plug in through `ports`.
"""
