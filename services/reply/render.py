"""Render reply templates (text and autoescaped HTML) in the sender's language plus the German text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup, escape

from services.classify.schema import LANGUAGES, RuleSettings
from services.reply.hours import format_moment, format_week, office_status

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


@dataclass(frozen=True)
class TemplateProblem:
    """A template that cannot be rendered: where (template file and line) and why, in plain words."""

    file: str
    line: int
    message: str


class _Described(dict[str, Any]):
    """A context mapping that knows what it is, so a missing key is reported as the settings key to add."""

    def __init__(self, values: dict[str, Any], missing: Callable[[str], str]) -> None:
        super().__init__(values)
        self.missing = missing


class ExplainedUndefined(jinja2.StrictUndefined):
    """StrictUndefined whose error names the unknown channel or the missing settings key, not 'dict object'."""

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        if isinstance(owner, _Described) and isinstance(self._undefined_name, str):
            return owner.missing(self._undefined_name)
        if owner is jinja2.utils.missing and self._undefined_name:
            return f"{self._undefined_name!r} is not a template variable (templates/README.md lists them)"
        return str(super()._undefined_message)


def _channel_context(settings: RuleSettings, language: str, now: datetime, links: dict[str, str]) -> _Described:
    """settings.channels for the templates: link (tracked or plain URL), hours localized, open_now, next_opening."""
    zone = ZoneInfo(settings.timezone)
    channels: dict[str, Any] = {}
    for name, info in settings.channels.items():
        values: dict[str, Any] = info.model_dump(exclude_none=True, exclude={"hours"})
        values["link"] = links.get(name, info.url or "")
        if info.hours is not None:
            status = office_status(info.hours, settings.holidays, zone, now)
            values["hours"] = format_week(info.hours.week, language)
            values["open_now"] = status.open_now
            values["next_opening"] = format_moment(status.next_opening, language) if status.next_opening else ""

        def missing(key: str, name: str = name) -> str:
            if key in ("open_now", "next_opening"):
                return f"channel {name!r} has no opening hours: add settings.channels.{name}.hours to use {key}"
            return f"channel {name!r} has no {key!r}: add settings.channels.{name}.{key}"

        channels[name] = _Described(values, missing)
    known = ", ".join(sorted(settings.channels))
    return _Described(channels, lambda key: f"unknown channel {key!r} (known: {known}; settings.channels)")


def _location(exc: BaseException, fallback: str) -> tuple[str, int]:
    """The template file and line of a Jinja error: the syntax error's own, else the deepest template frame."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.filename or fallback, exc.lineno
    found = (fallback, 1)
    trace = exc.__traceback__
    while trace is not None:
        # jinja rewrites tracebacks so that template frames carry the template's file name and line
        filename = trace.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = (filename, trace.tb_lineno)
        trace = trace.tb_next
    return found


def _problem_message(exc: BaseException) -> str:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"template syntax: {exc.message}"
    if isinstance(exc, jinja2.UndefinedError):
        return str(exc)
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"included template not found: {exc.name}"
    return f"{type(exc).__name__}: {exc}"


# Validation renders at one fixed moment and with every channel both open and closed, so that both branches
# of `{% if channels.x.open_now %}` are checked.
SAMPLE_RECEIVED = datetime(2026, 3, 17, 9, 30, tzinfo=UTC)


def paragraphs(text: str) -> Markup:
    """Escape text and turn it into <p> blocks with clickable links; nothing unescaped gets through."""
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]
    html_blocks = []
    for block in blocks:
        escaped = str(escape(block))
        linked = _URL.sub(lambda m: f'<a href="{m.group(0)}">{m.group(0)}</a>', escaped)
        html_blocks.append("<p>" + linked.replace("\n", "<br>\n") + "</p>")
    return Markup("\n".join(html_blocks))  # noqa: S704 - every block was escaped above


class _MemoryBytecodeCache(jinja2.BytecodeCache):
    """Compiled templates shared by every renderer of the process, one entry per template file.

    Each rule-set load makes a fresh environment and renders every template; compiling them again was most
    of its cost. Jinja checks the source's checksum before using an entry, so an edited file is recompiled.
    """

    def __init__(self) -> None:
        self._store: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        data = self._store.get(bucket.key)
        if data is not None:
            bucket.bytecode_from_string(data)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._store[bucket.key] = bucket.bytecode_to_string()


_BYTECODE = _MemoryBytecodeCache()


class ReplyRenderer:
    """Jinja2 environment over templates/replies; HTML templates autoescape, text ones do not."""

    def __init__(self, templates_dir: Path, *, auto_reload: bool = True) -> None:
        self.templates_dir = templates_dir
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            # HTML templates autoescape; text templates must not (they would show &amp; to citizens)
            autoescape=lambda name: bool(name and name.endswith(".html.j2")),  # noqa: S701
            undefined=ExplainedUndefined,
            keep_trailing_newline=False,
            auto_reload=auto_reload,
            bytecode_cache=_BYTECODE,
        )
        self.env.filters["paragraphs"] = paragraphs

    def has(self, template: str, language: str) -> bool:
        try:
            self.env.get_template(f"replies/{template}/{language}.txt.j2")
        except jinja2.TemplateNotFound:
            return False
        return True

    def _has_file(self, template: str, language: str, kind: str) -> bool:
        """Like `has`, without compiling: validation compiles each file once, in `_check_one`."""
        try:
            self.env.loader.get_source(self.env, f"replies/{template}/{language}.{kind}.j2")  # type: ignore[union-attr]
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

    def context(
        self,
        settings: RuleSettings,
        language: str,
        received_at: datetime,
        reference: str,
        links: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Every variable a reply template gets (templates/README.md); office hours as at `received_at`."""
        local = received_at.astimezone(ZoneInfo(settings.timezone))
        return {
            "organisation": settings.organisation,
            "channels": _channel_context(settings, language, received_at, links or {}),
            "received_date": local.strftime("%d.%m.%Y"),
            "received_time": local.strftime("%H:%M"),
            "received_iso": local.isoformat(timespec="minutes"),
            "reference": reference,
            "language": language,
        }

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
        """The reply in the sender's language (if the template has it) and German; office hours as at receipt.

        Raises TemplateMissing, or a jinja2 error for a template that changed on disk since the rule set loaded.
        """
        if not self.has(template, "de"):
            raise TemplateMissing(f"templates/replies/{template}/de.txt.j2")
        language = self.reply_language(template, language, settings)
        text, html = self._render_one(
            template, language, self.context(settings, language, received_at, reference, links)
        )
        if language != "de":
            german = self.context(settings, "de", received_at, reference, links)
            german_text, german_html = self._render_one(template, "de", german)
            separator = GERMAN_BINDING[language]
            text = f"{text}\n{'-' * 60}\n{separator}\n{'-' * 60}\n\n{german_text}"
            html = f"{html}\n<hr>\n<p><strong>{escape(separator)}</strong></p>\n{german_html}"
        subject = SUBJECTS.get(language, SUBJECTS["de"]).format(organisation=settings.organisation)
        if language != "de":
            subject = f"{subject} / {SUBJECTS['de'].format(organisation=settings.organisation)}"
        page = self.env.get_template("replies/_page.html.j2").render(body=Markup(html), lang=language)  # noqa: S704
        return RenderedReply(subject=subject, text=text, html=page, language=language)

    def _check_one(self, template: str, language: str, settings: RuleSettings) -> TemplateProblem | None:
        context = self.context(settings, language, SAMPLE_RECEIVED, "SAMPLE123456", None)
        fallback = str(self.templates_dir / "replies" / template / f"{language}.txt.j2")
        try:
            for open_now in (True, False):
                for info in context["channels"].values():
                    if "open_now" in info:
                        info["open_now"] = open_now
                self._render_one(template, language, context)
            self.env.get_template("replies/_page.html.j2").render(body=Markup(""), lang=language)
        except Exception as exc:  # any failure of a template is a refused rule set, never a crash of the loader
            file, line = _location(exc, fallback)
            return TemplateProblem(file, line, _problem_message(exc))
        return None

    def check(self, templates: Iterable[str], settings: RuleSettings) -> tuple[list[TemplateProblem], list[str]]:
        """Render every template in every language it has, as a reply would; (errors, missing-language warnings).

        A language in `settings.reply_languages` without its text file is a warning: those senders get the
        English and German reply, or German alone.
        """
        problems: list[TemplateProblem] = []
        warnings: list[str] = []
        for template in sorted(set(templates)):
            for language in LANGUAGES:
                if self._has_file(template, language, "txt"):
                    problem = self._check_one(template, language, settings)
                    if problem is not None:
                        problems.append(problem)
                elif language in settings.reply_languages:
                    instead = "English and German" if self._has_file(template, "en", "txt") else "German only"
                    warnings.append(
                        f"{self.templates_dir / 'replies' / template}: no {language}.txt.j2 - "
                        f"{language} senders get the reply in {instead}"
                    )
        return problems, warnings
