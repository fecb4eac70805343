"""The /api/v1 answers as pydantic models: the OpenAPI document's schemas are generated from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from services.domain import Priority
from services.store.models import JobState, MessageState
from services.store.reports import COMPARED, FIGURE_NAMES, PER_DAY_FIELDS, By, GroupBy

Share = float | None


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Answer):
    error: str


# one group's numbers (docs/metrics.md gives each formula); generated from the names reports.figures() writes,
# so a new figure cannot be missing here
Figures: type[BaseModel] = create_model(
    "Figures",
    __base__=_Answer,
    __doc__="One group's numbers; docs/metrics.md gives the formula of each (shares are 0..1 or null).",
    **{name: (int | float | None, ...) for name in (*FIGURE_NAMES, *PER_DAY_FIELDS)},  # type: ignore[call-overload]
)


class Period(_Answer):
    from_: str = Field(alias="from", json_schema_extra={"format": "date"})
    to: str = Field(json_schema_extra={"format": "date"})
    days: int


SummaryExtras: type[BaseModel] = create_model(
    "SummaryExtras",
    __base__=_Answer,
    period=(Period, ...),
    working_days=(int, ...),
    suppressed_by_reason=(dict[str, int], ...),
    rejected_at_smtp=(dict[str, int], ...),
    by_category=(dict[str, Figures], ...),
    by_channel=(
        dict[str, Figures],
        Field(description="by the channel the reply steered to; links_opened by the channel clicked"),
    ),
)

Summary: type[BaseModel] = create_model(
    "Summary",
    __base__=_Answer,
    __doc__="The totals of a period (Figures) with per-day rates, reasons, and the same numbers per category/channel.",
    **{name: (int | float | None, ...) for name in (*FIGURE_NAMES, *PER_DAY_FIELDS)},  # type: ignore[call-overload]
    **{name: (field.annotation, field) for name, field in SummaryExtras.model_fields.items()},
)

Change: type[BaseModel] = create_model(
    "Change",
    __base__=_Answer,
    __doc__="Relative change after/before - 1 of each compared number (null when the before value is 0 or null).",
    **{name: (Share, ...) for name in COMPARED},  # type: ignore[call-overload]
)


class Compare(_Answer):
    before: Summary
    after: Summary
    change: Change


class VolumePoint(_Answer):
    period: str
    key: str
    count: int


class Volumes(_Answer):
    from_: str = Field(alias="from", json_schema_extra={"format": "date"})
    to: str = Field(json_schema_extra={"format": "date"})
    group_by: GroupBy
    by: By
    outcome: str
    series: list[VolumePoint]


class DecisionView(_Answer):
    category: str
    channel: str
    rule: str
    ruleset_version: str
    template: str | None
    priority: Priority
    language: str
    reply: bool
    suppressed: str | None
    deliver_to: str | None
    tags: list[str]
    defects: list[str]
    decided_at: str | None = Field(json_schema_extra={"format": "date-time"})


class ReplyView(_Answer):
    state: JobState
    attempts: int
    sent_at: str | None
    error: str | None


class DeliveryView(_Answer):
    state: JobState
    attempts: int
    delivered_at: str | None
    error: str | None


class MessageView(_Answer):
    """One message's state, decision, reply and delivery; no addresses, subject or content."""

    id: str
    state: MessageState
    protocol: Literal["smtp", "lmtp"]
    received_at: str | None = Field(json_schema_extra={"format": "date-time"})
    size: int
    recipients: int
    purged: bool
    decision: DecisionView | None
    reply: ReplyView | None
    delivery: DeliveryView | None


MODELS: tuple[type[BaseModel], ...] = (Error, Figures, Summary, Compare, Volumes, MessageView)


def component_schemas() -> dict[str, Any]:
    """Every model's JSON schema, nested models as `#/components/schemas/<Name>` references."""
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas
