"""Render reply templates (text and autoescaped HTML) in the sender's language plus the German text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup, escape

from services.classify.schema import RuleSettings

RTL_LANGUAGES = frozenset({"ar"})
SUBJECTS = {
    "de": "Eingangsbestätigung: Ihre E-Mail an {organisation}",
    "en": "Confirmation of receipt: your e-mail to {organisation}",
    "uk": "Підтвердження отримання: ваш лист до {organisation}",
    "ar": "تأكيد الاستلام: رسالتك الإلكترونية إلى {organisation}",
    "ru": "Подтверждение получения: ваше письмо в {organisation}",
    "tr": "Alındı onayı: {organisation} kurumuna gönderdiğiniz e-posta",
}
GERMAN_BINDING = {
    "en": "German version (legally binding)",
    "uk": "Німецька версія (юридично обов'язкова) / Deutsche Fassung (rechtlich verbindlich)",
    "ar": "النسخة الألمانية (الملزمة قانونيًا) / Deutsche Fassung (rechtlich verbindlich)",
    "ru": "Немецкая версия (юридически обязательная) / Deutsche Fassung (rechtlich verbindlich)",
    "tr": "Almanca metin (hukuken bağlayıcı) / Deutsche Fassung (rechtlich verbindlich)",
}
_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]")


@dataclass(frozen=True)
class RenderedReply:
    subject: str
    text: str
    html: str
    language: str


class TemplateMissing(Exception):
    pass


def paragraphs(text: str) -> Markup:
    """Escape text and turn it into <p> blocks with clickable links; nothing unescaped gets through."""
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]
    html_blocks = []
    for block in blocks:
        escaped = str(escape(block))
        linked = _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', escaped)
        html_blocks.append("<p>" + linked.replace("\n", "<br>\n") + "</p>")
    return Markup("\n".join(html_blocks))  # noqa: S704 - every block was escaped above


FLAT_SEPARATOR = "__"


class FlatOrNestedLoader(jinja2.FileSystemLoader):
    """templates/replies/x/de.txt.j2, or the same file flattened to replies__x__de.txt.j2 (a ConfigMap key)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        try:
            return super().get_source(environment, template)
        except jinja2.TemplateNotFound:
            return super().get_source(environment, template.replace("/", FLAT_SEPARATOR))


class ReplyRenderer:
    """Jinja2 environment over templates/replies; HTML templates autoescape, text ones do not."""

    def __init__(self, templates_dir: Path) -> None:
        self.env = jinja2.Environment(
            loader=FlatOrNestedLoader(str(templates_dir)),
            # HTML templates autoescape; text templates must not (they would show &amp; to citizens)
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),  # noqa: S701
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
            auto_reload=True,
        )
        self.env.filters["paragraphs"] = paragraphs

    def has(self, template: str, language: str) -> bool:
        try:
            self.env.get_template(f"replies/{template}/{language}.txt.j2")
        except jinja2.TemplateNotFound:
            return False
        return True

    def reply_language(self, template: str, detected: str, settings: RuleSettings) -> str:
        """The language a reply is written in (German is always added): the sender's if a template exists,
        English for other detected languages (Romanian, Persian, Polish ...), else German alone."""
        for candidate in (detected, "en"):
            if candidate != "de" and candidate in settings.reply_languages and self.has(template, candidate):
                return candidate
            if detected in ("de",):
                break
        return "de"

    def _render_one(self, template: str, language: str, context: dict[str, Any]) -> tuple[str, str]:
        text = self.env.get_template(f"replies/{template}/{language}.txt.j2").render(context).strip() + "\n"
        try:
            html_template = self.env.get_template(f"replies/{template}/{language}.html.j2")
        except jinja2.TemplateNotFound:
            html_template = self.env.get_template("replies/_base.html.j2")
        html = html_template.render(
            {**context, "text_body": text, "lang": language, "dir": "rtl" if language in RTL_LANGUAGES else "ltr"}
        )
        return text, html

    def render(
        self,
        template: str,
        language: str,
        settings: RuleSettings,
        received_at: datetime,
        reference: str,
        links: dict[str, str] | None = None,
    ) -> RenderedReply:
        if not self.has(template, "de"):
            raise TemplateMissing(f"templates/replies/{template}/de.txt.j2")
        language = self.reply_language(template, language, settings)
        local = received_at.astimezone(ZoneInfo(settings.timezone))
        channels = {name: info.model_dump(exclude_none=True) for name, info in settings.channels.items()}
        for name, url in (links or {}).items():
            channels.setdefault(name, {})["link"] = url
        for info in channels.values():
            info.setdefault("link", info.get("url", ""))
        context: dict[str, Any] = {
            "organisation": settings.organisation,
            "channels": channels,
            "received_date": local.strftime("%d.%m.%Y"),
            "received_time": local.strftime("%H:%M"),
            "received_iso": local.isoformat(timespec="minutes"),
            "reference": reference,
        }
        text, html = self._render_one(template, language, context)
        if language != "de":
            german_text, german_html = self._render_one(template, "de", context)
            separator = GERMAN_BINDING[language]
            text = f"{text}\n{'-' * 60}\n{separator}\n{'-' * 60}\n\n{german_text}"
            html = f"{html}\n<hr>\n<p><strong>{escape(separator)}</strong></p>\n{german_html}"
        subject = SUBJECTS.get(language, SUBJECTS["de"]).format(organisation=settings.organisation)
        if language != "de":
            subject = f"{subject} / {SUBJECTS['de'].format(organisation=settings.organisation)}"
        page = self.env.get_template("replies/_page.html.j2").render(body=Markup(html), lang=language)  # noqa: S704
        return RenderedReply(subject=subject, text=text, html=page, language=language)
