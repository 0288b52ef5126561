"""Which edit takes which Image Services parameter, and the API's ranges:
every problem is a violation naming the field, all reported at once."""

from __future__ import annotations

import dataclasses

import pytest

from server.domain.catalogue import Catalogue
from server.domain.errors import InvalidArgument
from server.domain.idempotency import fingerprint
from server.domain.requests import EditOptions, EditRequest, Operation
from server.domain.validation import validate
from tests.support.image_services import CASES, MASK, SOURCE, STYLE, ServiceCase

CATALOGUE = Catalogue.load()
BY_OPERATION = {case.operation: case for case in CASES if case.id != "creative_upscale"}


def request_for(case: ServiceCase, **changes: object) -> EditRequest:
    request = EditRequest(
        model=case.model,
        prompt=case.prompt,
        images=(SOURCE,),
        mask=MASK if case.masked else None,
        operation=case.operation,
        size=str(case.size) if case.size else "",
        options=case.options,
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


def violations(request: EditRequest) -> list[str]:
    with pytest.raises(InvalidArgument) as caught:
        validate(request, CATALOGUE.get(request.model))
    return sorted(v.field for v in caught.value.violations)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_case_is_valid_and_keeps_its_options(case: ServiceCase) -> None:
    valid = validate(request_for(case), CATALOGUE.get(case.model))
    assert valid.operation is case.operation
    assert valid.options == case.options
    assert (valid.mask is not None) is case.masked


@pytest.mark.parametrize(
    ("operation", "options", "prompt", "fields"),
    [
        (Operation.SEARCH_REPLACE, EditOptions(), "a dog", ["search_prompt"]),
        (Operation.SEARCH_REPLACE, EditOptions(search_prompt="  "), "a dog", ["search_prompt"]),
        (Operation.SEARCH_REPLACE, EditOptions(search_prompt="cat"), "", ["prompt"]),
        (
            Operation.SEARCH_RECOLOR,
            EditOptions(search_prompt="car"),
            "red",
            ["search_prompt", "select_prompt"],
        ),
        (
            Operation.CONTROL_SKETCH,
            EditOptions(control_strength=1.5),
            "a castle",
            ["control_strength"],
        ),
        (
            Operation.CONTROL_STRUCTURE,
            EditOptions(control_strength=float("nan")),
            "x",
            ["control_strength"],
        ),
        (Operation.STYLE_GUIDE, EditOptions(fidelity=-0.1), "x", ["fidelity"]),
        (Operation.STYLE_GUIDE, EditOptions(), "", ["prompt"]),
        (Operation.OUTPAINT, EditOptions(), "", ["left"]),
        (Operation.OUTPAINT, EditOptions(left=2001, down=-1), "", ["down", "left"]),
        (Operation.OUTPAINT, EditOptions(up=10, creativity=2.0), "", ["creativity"]),
        (Operation.STYLE_TRANSFER, EditOptions(), "", ["style_image"]),
        (Operation.STYLE_TRANSFER, EditOptions(style_image=b"not an image"), "", ["style_image"]),
        (
            Operation.STYLE_TRANSFER,
            EditOptions(style_image=STYLE, change_strength=0.05),
            "",
            ["change_strength"],
        ),
        (Operation.ERASE_OBJECT, EditOptions(control_strength=0.5), "", ["control_strength"]),
        (
            Operation.SEARCH_REPLACE,
            EditOptions(search_prompt="c", select_prompt="d"),
            "x",
            ["select_prompt"],
        ),
        (Operation.SEARCH_REPLACE, EditOptions(search_prompt="c" * 4001), "x", ["search_prompt"]),
    ],
)
def test_each_bad_parameter_is_named(
    operation: Operation, options: EditOptions, prompt: str, fields: list[str]
) -> None:
    case = BY_OPERATION[operation]
    request = request_for(case, options=options, prompt=prompt)
    assert violations(request) == fields


def test_a_parameter_for_another_operation_is_named_not_dropped() -> None:
    # A zero strength is a choice, so it counts as sent.
    request = request_for(BY_OPERATION[Operation.STYLE_GUIDE])
    request = dataclasses.replace(
        request, options=EditOptions(fidelity=0.5, control_strength=0.0, left=5)
    )
    assert violations(request) == ["control_strength", "left"]


def test_the_older_edits_refuse_the_new_parameters() -> None:
    request = EditRequest(
        model="bedrock/stability-inpaint",
        prompt="a scarf",
        images=(SOURCE,),
        mask=MASK,
        operation=Operation.INPAINT,
        options=EditOptions(search_prompt="cat"),
    )
    assert violations(request) == ["search_prompt"]


def test_erase_needs_a_mask_and_other_new_edits_refuse_one() -> None:
    erase = request_for(BY_OPERATION[Operation.ERASE_OBJECT], mask=None)
    assert violations(erase) == ["mask"]
    recolor = request_for(BY_OPERATION[Operation.SEARCH_RECOLOR], mask=MASK)
    assert violations(recolor) == ["mask"]


def test_options_change_the_idempotency_fingerprint() -> None:
    case = BY_OPERATION[Operation.SEARCH_REPLACE]
    plain = request_for(case, options=EditOptions())
    assert fingerprint(plain) == fingerprint(dataclasses.replace(plain))
    first = request_for(case, options=EditOptions(search_prompt="cat"))
    second = request_for(case, options=EditOptions(search_prompt="dog"))
    assert len({fingerprint(plain), fingerprint(first), fingerprint(second)}) == 3
