"""The proposal a free-text message becomes: the same shape from the offline parser and from the model.

JSON keys are camelCase exactly as the host application reads them (``estimatedHours``, ``dueDate``,
``totalEstimatedHours``; ``leftOut`` only when the offline parser left something out). Validation is
strict so that a model's bad answer (a missing key, a negative estimate, a date that is not ISO, an unknown
priority) is rejected and the offline parser answers instead.
Control characters are taken out of the texts (:mod:`shared.ai.clean_text`): PostgreSQL refuses NUL.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

from shared.ai.clean_text import storable_text

Priority = Literal["high", "medium", "low"]
ItemType = Literal["task", "bug", "feature", "meeting", "research", "docs"]

MAX_ITEMS = 25
MAX_TITLE = 120
MAX_ITEM_HOURS = 10_000
MAX_LEFT_OUT = 10
MAX_LEFT_OUT_CHARS = 40


def _number(value: float | None) -> float | int | None:
    """Whole hours print as 4, not 4.0."""
    return int(value) if value is not None and float(value).is_integer() else value


class ProposalError(ValueError):
    """The text holds no work item a proposal can be made of; the message says why, for the user."""


class ProposalItem(BaseModel):
    """One work item: what to do, how long, by when, how urgent."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    type: ItemType = "task"
    title: str = Field(min_length=1, max_length=MAX_TITLE)
    description: str = Field(default="", max_length=2000)
    estimated_hours: float | None = Field(default=None, alias="estimatedHours", gt=0, le=MAX_ITEM_HOURS)
    due_date: dt.date | None = Field(default=None, alias="dueDate")
    priority: Priority = "medium"

    @field_validator("title")
    @classmethod
    def _clean_title(cls, value: str) -> str:
        value = " ".join(storable_text(value).split())
        if not value:
            raise ValueError("title is blank")
        return value

    @field_validator("description")
    @classmethod
    def _clean_description(cls, value: str) -> str:
        return storable_text(value)

    @field_serializer("estimated_hours")
    def _hours_out(self, value: float | None) -> float | int | None:
        return _number(value)


class Proposal(BaseModel):
    """A summary, the items, the total of their hours (only when every item has hours), a confidence, and
    the sender's words the offline parser read but left out ("due 31/02", "0h"), for the confirmation to
    name: the model's answer has none."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    summary: str = Field(min_length=1, max_length=500)
    items: list[ProposalItem] = Field(min_length=1, max_length=MAX_ITEMS)
    total_estimated_hours: float | None = Field(default=None, alias="totalEstimatedHours", ge=0)
    confidence: float = Field(ge=0, le=1)
    left_out: tuple[Annotated[str, Field(min_length=1, max_length=MAX_LEFT_OUT_CHARS)], ...] = Field(
        default=(), alias="leftOut", max_length=MAX_LEFT_OUT
    )

    @field_validator("summary")
    @classmethod
    def _clean_summary(cls, value: str) -> str:
        value = storable_text(value)
        if not value.strip():
            raise ValueError("summary is blank")
        return value

    @field_validator("left_out")
    @classmethod
    def _clean_left_out(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = (" ".join(storable_text(text).split()) for text in value)
        return tuple(text for text in cleaned if text)

    @model_validator(mode="after")
    def _total_is_the_sum(self) -> Proposal:
        hours = [item.estimated_hours for item in self.items]
        if all(h is not None for h in hours):
            expected = round(sum(h for h in hours if h is not None), 2)
            if self.total_estimated_hours is None or abs(self.total_estimated_hours - expected) > 0.05:
                # The items are the source of truth; a model's arithmetic is not.
                object.__setattr__(self, "total_estimated_hours", expected)
        elif self.total_estimated_hours is not None:
            object.__setattr__(self, "total_estimated_hours", None)
        return self

    @field_serializer("total_estimated_hours")
    def _total_out(self, value: float | None) -> float | int | None:
        return _number(value)

    def to_json_dict(self) -> dict[str, Any]:
        """The proposal with the public camelCase keys and ISO dates, ready for json.dumps.

        ``leftOut`` only when something was left out: the proposal of every other message keeps the four
        keys a release without it reads (its persist task refuses unknown keys)."""
        out = self.model_dump(mode="json", by_alias=True)
        if not out["leftOut"]:
            del out["leftOut"]
        return out


def json_schema_for_model() -> dict[str, Any]:
    """The strict JSON schema sent to the model (OpenAI structured outputs: every key required,
    no additional properties, nullable fields as ``["type", "null"]``)."""
    nullable_number = {"type": ["number", "null"]}
    item = {
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "title", "description", "estimatedHours", "dueDate", "priority"],
        "properties": {
            "type": {"type": "string", "enum": list(ItemType.__args__)},
            "title": {"type": "string", "description": "short, starts with a capital, the user's own words"},
            "description": {"type": "string"},
            "estimatedHours": {**nullable_number, "description": "hours of work; null when not stated"},
            "dueDate": {"type": ["string", "null"], "description": "ISO date YYYY-MM-DD or null"},
            "priority": {"type": "string", "enum": ["high", "medium", "low"]},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["summary", "items", "totalEstimatedHours", "confidence"],
        "properties": {
            "summary": {"type": "string"},
            "items": {"type": "array", "items": item},
            "totalEstimatedHours": nullable_number,
            "confidence": {"type": "number"},
        },
    }
