"""Pydantic schema of the rule files: settings, conditions, actions and rules."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PRIORITIES = ("low", "normal", "high", "urgent")
Language = Literal["de", "en", "uk", "ar", "ru", "tr"]
LANGUAGES: tuple[Language, ...] = ("de", "en", "uk", "ar", "ru", "tr")


def _default_targets() -> dict[str, str | None]:
    return {"staff": None}


def _all_languages() -> list[Language]:
    return list(LANGUAGES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_regexes(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad regex {pattern!r}: {exc}") from exc
    return patterns


class TextMatch(_Strict):
    """Keywords match at a word start after case and umlaut folding; a leading '*' matches anywhere."""

    keywords: list[str] = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list)

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: list[str]) -> list[str]:
        return _check_regexes(value)

    @model_validator(mode="after")
    def _not_empty(self) -> TextMatch:
        if not self.keywords and not self.regex:
            raise ValueError("needs keywords or regex")
        if any(not keyword.strip("* ") for keyword in self.keywords):
            raise ValueError("empty keyword")
        return self


class AddressMatch(_Strict):
    """Addresses exactly, domains (with '*.' or '.' prefix for subdomains), globs, or named lists."""

    address: list[str] = Field(default_factory=list)
    domain: list[str] = Field(default_factory=list)
    glob: list[str] = Field(default_factory=list)
    list_name: str | None = Field(default=None, alias="list")

    @model_validator(mode="after")
    def _not_empty(self) -> AddressMatch:
        if not (self.address or self.domain or self.glob or self.list_name):
            raise ValueError("needs address, domain, glob or list")
        return self


class AttachmentMatch(_Strict):
    min_count: int | None = Field(default=None, ge=0)
    max_count: int | None = Field(default=None, ge=0)
    mime_types: list[str] = Field(default_factory=list)
    filename: list[str] = Field(default_factory=list)


class HeaderMatch(_Strict):
    name: str
    exists: bool | None = None
    equals: str | None = None
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            _check_regexes([value])
        return value


class TimeMatch(_Strict):
    """Working time: weekdays (mon..sun), an HH:MM-HH:MM window, holidays from a named list; local time zone."""

    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(default_factory=list)
    hours: str | None = None
    holidays: str | None = None
    timezone: str = "Europe/Berlin"

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d", value):
            raise ValueError("hours must look like 08:00-18:00")
        return value


CONDITION_KEYS = (
    "all",
    "any",
    "not",
    "recipient",
    "sender",
    "subject",
    "body",
    "text",
    "attachments",
    "language",
    "header",
    "automated",
    "time",
    "always",
)


class Condition(_Strict):
    """Exactly one key per condition; combine with all / any / not."""

    all_: list[Condition] | None = Field(default=None, alias="all")
    any_: list[Condition] | None = Field(default=None, alias="any")
    not_: Condition | None = Field(default=None, alias="not")
    recipient: AddressMatch | None = None
    sender: AddressMatch | None = None
    subject: TextMatch | None = None
    body: TextMatch | None = None
    text: TextMatch | None = None
    attachments: AttachmentMatch | None = None
    language: list[Literal["de", "en", "uk", "ar", "ru", "tr"]] | None = None
    header: HeaderMatch | None = None
    automated: bool | None = None
    time: TimeMatch | None = None
    always: Literal[True] | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a condition must be a mapping with one key of: " + ", ".join(CONDITION_KEYS))
        keys = [key for key in data if key in CONDITION_KEYS]
        if len(data) != 1 or len(keys) != 1:
            raise ValueError(
                f"a condition needs exactly one key of {', '.join(CONDITION_KEYS)}; got {', '.join(map(str, data))}"
            )
        return data


class Action(_Strict):
    category: str
    channel: str
    reply: str | None = Field(default=None, description="reply template name; null = no reply")
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    deliver: bool = Field(default=True, description="hand the original on to staff")
    deliver_to: str = "staff"
    tags: list[str] = Field(default_factory=list)


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=120)
    description: str = ""
    priority: int = 0
    when: Condition | None = None
    then: Action


class ChannelInfo(_Strict):
    """What the templates need to point at a channel; the deployment sets these, not the templates."""

    model_config = ConfigDict(extra="allow", frozen=True)
    url: str | None = None
    phone: str | None = None
    hours: str | None = None
    address: str | None = None


class ServedMailboxes(_Strict):
    domains: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)


class RuleSettings(_Strict):
    organisation: str
    served: ServedMailboxes
    own_addresses: list[str] = Field(default_factory=list, description="extra addresses that are ours (loops)")
    channels: dict[str, ChannelInfo]
    targets: dict[str, str | None] = Field(
        default_factory=_default_targets,
        description="deliver_to name -> staff address; null keeps the original recipients",
    )
    timezone: str = "Europe/Berlin"
    reply_languages: list[Language] = Field(default_factory=_all_languages)


class RuleFile(_Strict):
    settings: RuleSettings | None = None
    rules: list[Rule] = Field(default_factory=list)


Condition.model_rebuild()
