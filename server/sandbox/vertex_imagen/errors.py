"""Answers as gRPC statuses: `RpcError`, and its `google.rpc.Status` trailer."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2


class RpcError(Exception):
    """Answer with this gRPC status (and google.rpc details)."""

    def __init__(self, code: grpc.StatusCode, message: str, *details: ProtoMessage) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def invalid(text: str) -> RpcError:
    """INVALID_ARGUMENT with `text`."""
    return RpcError(grpc.StatusCode.INVALID_ARGUMENT, text)


def error_info(reason: str, domain: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    """A `google.rpc.ErrorInfo` detail."""
    return error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata)


def status_bytes(error: RpcError) -> bytes:
    """`error` as the serialized `google.rpc.Status` of `grpc-status-details-bin`."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    for detail in error.details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return bytes(status.SerializeToString())


class Dropped(Exception):
    """The call's connection was cut on purpose."""
