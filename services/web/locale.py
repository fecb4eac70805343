"""Numbers, dates and display names for the dashboard page in German (default) or English."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from services.classify.schema import DisplayNames, RuleSettings
from services.domain import PAGE_LANGUAGES, PageLanguage

MINUS = "\u2212"  # a real minus sign, as typeset numbers use
NBSP = "\u00a0"
_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class PageLocale:
    language: str
    tag: str  # BCP 47, for the browser's Intl (chart ticks and tooltips)
    decimal: str
    group: str
    names: DisplayNames
    fallback: DisplayNames

    @classmethod
    def of(cls, language: str, settings: RuleSettings) -> PageLocale:
        page: PageLanguage = next((known for known in PAGE_LANGUAGES if known == language), "de")
        german = settings.labels.get("de", DisplayNames())
        names = settings.labels.get(page, german)
        if page == "en":
            return cls("en", "en-GB", ".", ",", names, german)
        return cls("de", "de-DE", ",", ".", names, german)

    def number(self, value: float | None, digits: int = 0) -> str:
        if value is None:
            return "–"
        text = f"{abs(value):,.{digits}f}".replace(",", "\0").replace(".", self.decimal).replace("\0", self.group)
        return (MINUS if value < 0 and text.strip("0.,") else "") + text

    def percent(self, share: float | None, digits: int = 1) -> str:
        """A share 0..1 as a percentage ("24,7 %" in German, "24.7%" in English)."""
        if share is None:
            return "–"
        return self.number(share * 100, digits) + (NBSP + "%" if self.language == "de" else "%")

    def change(self, change: float | None) -> str:
        """A relative change with its sign ("−46,2 %", "+3.0%")."""
        if change is None:
            return "–"
        sign = "+" if change > 0 else ""
        return sign + self.percent(change)

    def day(self, day: date) -> str:
        if self.language == "en":
            return f"{day.day} {_MONTHS_EN[day.month - 1]} {day.year}"
        return day.strftime("%d.%m.%Y")

    def short_day(self, day: date) -> str:
        if self.language == "en":
            return f"{day.day} {_MONTHS_EN[day.month - 1]}"
        return day.strftime("%d.%m.")

    def category(self, name: str) -> str:
        return self.names.categories.get(name) or self.fallback.categories.get(name) or name

    def channel(self, name: str) -> str:
        return self.names.channels.get(name) or self.fallback.channels.get(name) or name
