"""What every section of the spec shares: strict parsing, and the small types of its fields."""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: Marks a cross-field error whose lines each start with their own dotted path.
CROSS_FIELD = "cross-field:\n"

#: Marks a section-level error about one of its fields: ``<field>\n<message>``.
IN_SECTION = "field:\n"

#: The seeds numpy, torch and Python's random all accept.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


def _numeric(annotation: Any) -> bool:
    """Does a field of this type take numbers (and so must not take true/false)?"""
    if get_origin(annotation) is Annotated:
        return _numeric(get_args(annotation)[0])
    options = [get_args(o)[0] if get_origin(o) is Annotated else o for o in get_args(annotation)]
    options = options or [annotation]
    return bool not in options and any(o in (int, float) for o in options)


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("empty: name a file, a folder or a model")
    return text


#: A path or a model name: never empty (an empty path is the working directory).
PathText = Annotated[str, AfterValidator(_not_blank)]


class Section(BaseModel):
    # NaN and infinities are never a meaningful learning rate, margin or budget.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """``max_steps: yes`` is YAML for 1 to pydantic; a number field gets a number."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field and _numeric(field.annotation):
                    raise ValueError(f"{IN_SECTION}{name}\nexpected a number, got {value}")
        return data


def _endpoint_url(url: str | None) -> str | None:
    if url is not None and not re.fullmatch(r"https?://[^/@\s]+/?", url):
        raise ValueError("expected http(s)://host[:port] with no credentials or path")
    return url.rstrip("/") if url else url


#: An S3-compatible endpoint: where to reach a store, never how to log in to it.
EndpointUrl = Annotated[str | None, AfterValidator(_endpoint_url)]


def _distinct(values: list[Any]) -> list[Any]:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


#: A list whose entries each mean one thing to do (a format, a precision): none twice.
Distinct = AfterValidator(_distinct)
