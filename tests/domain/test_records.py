"""`GenerationRecord`'s stored form: every field, and never an image's bytes or URL."""

from __future__ import annotations

import json
from dataclasses import fields, replace
from decimal import Decimal

from server.domain.records import DeliveredImage, GenerationRecord, ImageFailure
from server.domain.requests import Operation


def _record() -> GenerationRecord:
    image = DeliveredImage(
        index=1,
        mime_type="image/png",
        width=1024,
        height=768,
        key="images/g/1.png",
        url="https://media.example/images/g/1.png?sig=secret",
        data=b"\x89PNG-bytes",
        seed=7,
    )
    return GenerationRecord(
        generation_id="gen-1",
        model="azure/flux-2-pro",
        operation=Operation.INPAINT,
        prompt="a lighthouse",
        size="1024x768",
        n=2,
        created=1_765_000_000,
        images=(image,),
        cost=Decimal("0.040"),
        latency_ms=512,
        failures=(ImageFailure(image_count=1, reason="CONTENT_FILTERED", message="withheld"),),
        warnings=("routed to a successor",),
        key_id="key_abc",
    )


def test_the_stored_form_has_every_field_and_no_image_bytes_or_url() -> None:
    record = _record()
    body = json.loads(record.to_json())

    assert set(body) == {f.name for f in fields(GenerationRecord)}
    assert body["operation"] == "inpaint" and body["cost"] == "0.040"
    assert body["failures"] == [
        {"image_count": 1, "reason": "CONTENT_FILTERED", "message": "withheld"}
    ]
    (image,) = body["images"]
    assert set(image) == {f.name for f in fields(DeliveredImage)} - {"data", "url"}
    assert image["seed"] == 7 and image["key"] == "images/g/1.png"


def test_a_stored_record_reads_back_as_itself_without_image_data() -> None:
    record = _record()

    restored = GenerationRecord.from_json(record.to_json())

    # The bytes are not kept, and the URL is made anew when the record is served.
    assert restored.images == (replace(record.images[0], data=None, url=""),)
    assert restored == replace(record, images=restored.images)
