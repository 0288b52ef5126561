"""The gRPC edge: the only package that imports grpc and generated code."""
