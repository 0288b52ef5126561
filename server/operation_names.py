"""Operations outside gRPC: the REST `operation` field, the CLI's
`--operation` and what both print, and the operation parameters both pass
through. `OPERATION_SEARCH_REPLACE` is `search_replace`, the domain's
`Operation` value; the proto enum is the one list, so a new operation is
named everywhere at once."""

from __future__ import annotations

from typing import cast

from chuizi.image.v1 import image_service_pb2 as pb

_PREFIX = "OPERATION_"


def operation_name(operation: int) -> str:
    """`OPERATION_PROMPT_EDIT` -> `prompt_edit`; an unknown number as digits."""
    try:
        name: str = pb.Operation.Name(operation)
    except ValueError:
        return str(operation)
    return name.removeprefix(_PREFIX).lower()


# Every edit operation by name (not unspecified, not generate).
EDIT_OPERATIONS: dict[str, pb.Operation] = {
    operation_name(value): cast(pb.Operation, value)
    for value in pb.Operation.values()
    if value not in (pb.OPERATION_UNSPECIFIED, pb.OPERATION_GENERATE)
}


# The `EditRequest` fields of the operations' own parameters (the Stability
# Image Services'), by type; REST form fields and CLI options of the same
# names. Which operation takes which is the service's to check.
EDIT_TEXT_FIELDS = ("search_prompt", "select_prompt")
EDIT_NUMBER_FIELDS = (
    "control_strength",
    "fidelity",
    "creativity",
    "style_strength",
    "composition_fidelity",
    "change_strength",
)
EDIT_PIXEL_FIELDS = ("left", "right", "up", "down")
