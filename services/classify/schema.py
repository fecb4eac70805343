"""Pydantic schema of the rule files: settings, actions and rules; conditions come from the registry."""

from __future__ import annotations

import builtins
import functools
import itertools
import keyword
import re
from datetime import date
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ConfigDict, Field, RootModel, create_model, field_validator, model_validator

from services.classify.conditions import CONDITION_KEYS, KINDS
from services.classify.conditions.base import ConditionKind
from services.classify.conditions.base import Strict as _Strict
from services.domain import REPLY_LANGUAGES, PageLanguage, Priority, ReplyLanguage

STAFF_TARGET = "staff"
POSTMASTER_TARGET = "postmaster"


def _default_targets() -> dict[str, str | None]:
    return {STAFF_TARGET: None}


def _all_languages() -> list[ReplyLanguage]:
    return list(REPLY_LANGUAGES)


def _field_name(key: str) -> str:
    """The attribute of a condition key: `all_`, `any_`, `not_` where the key is a Python word."""
    return key + "_" if keyword.iskeyword(key) or hasattr(builtins, key) else key


_KEY_OF_FIELD = {_field_name(kind.key): kind.key for kind in KINDS}


class ConditionBase(_Strict):
    """Exactly one key per condition; combine with all / any / not."""

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
        if data[keys[0]] is None:
            raise ValueError(f"{keys[0]!r} needs a value")
        return data

    @property
    def key(self) -> str:
        """The YAML key of this condition, which names its kind in the registry (services.classify.conditions)."""
        [name] = self.model_fields_set
        return _KEY_OF_FIELD[name]

    @property
    def spec(self) -> Any:
        """The value under the key, as the kind's schema validated it."""
        [name] = self.model_fields_set
        return getattr(self, name)


def _condition_field(kind: ConditionKind[Any]) -> tuple[Any, Any]:
    schema = kind.schema
    annotation = f"{schema} | None" if isinstance(schema, str) else schema | None
    name = _field_name(kind.key)
    return annotation, Field(
        default=None, alias=kind.key if name != kind.key else None, description=kind.description or None
    )


if TYPE_CHECKING:
    Condition = ConditionBase
else:
    # one optional field per registered kind; "Condition" in a kind's schema is this model (resolved below)
    Condition = create_model(
        "Condition",
        __base__=ConditionBase,
        __module__=__name__,
        __doc__=ConditionBase.__doc__,
        **{_field_name(kind.key): _condition_field(kind) for kind in KINDS},
    )


class Action(_Strict):
    category: str
    channel: str
    reply: str | None = Field(default=None, description="reply template name; null = no reply")
    priority: Priority = Priority.NORMAL
    deliver: bool = Field(
        default=True, description="hand the original on to staff; false = held: to the postmaster target instead"
    )
    deliver_to: str = "staff"
    tags: list[str] = Field(default_factory=list)


class CategoryAction(_Strict):
    """What a category decided by the intent model does: the same fields as a rule's `then`, minus the category."""

    channel: str
    reply: str | None = None
    priority: Priority = Priority.NORMAL
    deliver: bool = True
    deliver_to: str = "staff"
    tags: list[str] = Field(default_factory=list)

    def action(self, category: str) -> Action:
        return Action(category=category, **self.model_dump())


class ModelSettings(_Strict):
    """The learned intent model: trained from labelled example mails when the rule set loads."""

    enabled: bool = True
    examples: str = Field(default="examples", description="folder of .eml files + labels.csv, under the rule folder")
    min_accuracy: float = Field(default=0.85, ge=0.0, le=1.0, description="cross-validated accuracy a set needs")
    low_confidence_margin: float = Field(
        default=0.12, ge=0.0, le=1.0, description="top-two probability gap below which the general overview is sent"
    )
    safety_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"emergency": 0.30, "objection": 0.35},
        description="probability at which a safety category wins over the model's top category",
    )
    folds: int = Field(default=5, ge=2, le=20, description="cross-validation folds of the acceptance check")
    min_safety_recall: float = Field(
        default=1.0, ge=0.0, le=1.0, description="cross-validated recall of emergency and objection a set needs"
    )
    semantic: bool = Field(default=True, description="ask the sentence-embedding model when the fast one is unsure")
    escalate_below_margin: float = Field(
        default=0.5, ge=0.0, le=1.0, description="fast-model top-two gap below which the embedding model is asked"
    )
    semantic_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="share of the embedding model in an escalated mail's scores"
    )
    safety_keeps_fast: bool = Field(
        default=False, description="an escalated mail keeps the fast model's emergency/objection score if higher"
    )
    safety_watch: float = Field(
        default=0.03,
        ge=0.0,
        le=1.0,
        description="fast-model safety probability from which the embedding model is asked",
    )


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=120)
    description: str = ""
    priority: int = 0
    when: Condition | None = None
    then: Action

    @property
    def is_catch_all(self) -> bool:
        """A rule without `when` (or `when: {always: true}`) matches every mail."""
        return self.when is None or self.when.key == "always"


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# per weekday (Monday first): opening intervals in minutes after local midnight, sorted, not overlapping
Week = tuple[tuple[tuple[int, int], ...], ...]
_INTERVAL = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]|24):([0-5]\d)")


def _days(key: str) -> list[int]:
    first, _, last = key.strip().lower().partition("-")
    if first not in WEEKDAYS or (last and last not in WEEKDAYS):
        raise ValueError(
            f"{key!r} is not a weekday or a range of weekdays (mon, tue, wed, thu, fri, sat, sun; mon-fri)"
        )
    start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
    if end < start:
        raise ValueError(f"{key!r}: write the days in week order, e.g. mon-fri")
    return list(range(start, end + 1))


def _intervals(key: str, values: tuple[str, ...]) -> list[tuple[int, int]]:
    found = []
    for text in (piece for value in values for piece in str(value).split(",")):
        match = _INTERVAL.fullmatch(str(text).strip())
        start = int(match.group(1)) * 60 + int(match.group(2)) if match else 0
        end = int(match.group(3)) * 60 + int(match.group(4)) if match else 0
        if match is None or end > 24 * 60 or end <= start:
            raise ValueError(f"{key}: {str(text).strip()!r} is not a time range like 08:00-12:00")
        found.append((start, end))
    return found


@functools.lru_cache(maxsize=64)
def _week(entries: tuple[tuple[str, tuple[str, ...]], ...]) -> Week:
    week: list[list[tuple[int, int]]] = [[] for _ in WEEKDAYS]
    for key, texts in entries:
        for day in _days(key):
            week[day].extend(_intervals(key, texts))
    for day, intervals in enumerate(week):
        intervals.sort()
        for (_s1, end1), (start2, _e2) in itertools.pairwise(intervals):
            if start2 < end1:
                raise ValueError(f"{WEEKDAYS[day]}: opening times overlap")
    return tuple(tuple(day) for day in week)


class OpeningHours(RootModel[dict[str, str | list[str]]]):
    """Weekday or weekday range -> local opening times: {mon-fri: "08:00-12:00", thu: "14:00-18:00"}.

    A day named in several entries is open at all their times; public holidays come from `settings.holidays`.
    """

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError('hours are weekdays with times, e.g. {mon-fri: "08:00-18:00"}, not free text')
        return data

    @model_validator(mode="after")
    def _parses(self) -> OpeningHours:
        if not self.root:
            raise ValueError("needs at least one day, e.g. mon-fri: 08:00-12:00")
        _ = self.week
        return self

    @property
    def week(self) -> Week:
        entries = tuple((key, (value,) if isinstance(value, str) else tuple(value)) for key, value in self.root.items())
        return _week(entries)


class ChannelInfo(_Strict):
    """What the templates need to point at a channel; the deployment sets these, not the templates.

    Other keys (crisis_phone, municipal_service ...) are allowed and reach the templates as they are.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    url: str | None = None
    phone: str | None = None
    hours: OpeningHours | None = Field(default=None, description="opening hours; templates get them localized")
    address: str | None = None


class ServedMailboxes(_Strict):
    domains: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)


class DisplayNames(_Strict):
    """What the dashboard calls categories and channels in one page language (the identifier where missing)."""

    categories: dict[str, str] = Field(default_factory=dict)
    channels: dict[str, str] = Field(default_factory=dict)


class RuleSettings(_Strict):
    organisation: str
    served: ServedMailboxes
    own_addresses: list[str] = Field(default_factory=list, description="extra addresses that are ours (loops)")
    channels: dict[str, ChannelInfo]
    targets: dict[str, str | None] = Field(
        default_factory=_default_targets,
        description="deliver_to name -> staff address; null keeps the original recipients. `postmaster` receives"
        " held mail (rules with deliver: false); without it held mail goes to the staff target",
    )
    timezone: str = "Europe/Berlin"
    holidays: list[date] = Field(default_factory=list, description="local dates every channel with hours is closed")
    reply_languages: list[ReplyLanguage] = Field(default_factory=_all_languages)
    categories: dict[str, CategoryAction] = Field(
        default_factory=dict, description="category -> action when the intent model decides it"
    )
    model: ModelSettings = Field(default_factory=ModelSettings)
    # dashboard: when e-mail reachability was cut, and display names per page language
    cutover: date | None = Field(
        default=None, description="the day e-mail reachability was cut; the dashboard compares before and after it"
    )
    labels: dict[PageLanguage, DisplayNames] = Field(
        default_factory=dict, description="page language -> display names of categories and channels"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from exc
        return value

    def delivery_target(self, action: Action) -> str:
        """The target an action's original goes to. Held mail is never silent (non-negotiable 1): it goes to
        the postmaster target, or to staff (flagged `X-Channelshift-Category`) where none is configured."""
        if action.deliver:
            return action.deliver_to
        return POSTMASTER_TARGET if POSTMASTER_TARGET in self.targets else STAFF_TARGET


class RuleFile(_Strict):
    settings: RuleSettings | None = None
    rules: list[Rule] = Field(default_factory=list)


Condition.model_rebuild()
