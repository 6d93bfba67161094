"""The limits the API states for a description and a service value are the record's:
256 bytes of UTF-8. The API said 1024 characters (its OpenAPI too), took 300 and
then failed deeper, with another message."""

from __future__ import annotations

import pydantic
import pytest

from smegmesh.core.record_fields import MAX_DESCRIPTION_BYTES, MAX_SERVICE_VALUE_BYTES
from smegmesh.daemon.api_models import DescriptionRequest, ServiceValueRequest


@pytest.mark.parametrize(
    ("model", "field", "most"),
    [
        (DescriptionRequest, "description", MAX_DESCRIPTION_BYTES),
        (ServiceValueRequest, "value", MAX_SERVICE_VALUE_BYTES),
    ],
)
def test_text_is_at_most_the_records_bytes(model: type, field: str, most: int) -> None:
    assert model.model_json_schema()["properties"][field]["maxLength"] == most
    model(**{field: "x" * most})
    model(**{field: "é" * (most // 2)})
    for text, n in (("x" * (most + 44), most + 44), ("😀" * 100, 400)):
        with pytest.raises(pydantic.ValidationError) as ei:
            model(**{field: text})
        msg = str(ei.value)
        assert f"at most {most} bytes of UTF-8 (got {n})" in msg, msg
