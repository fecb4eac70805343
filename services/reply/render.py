"""Render reply templates (text and autoescaped HTML) in the sender's language plus the German text."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup, escape

from services.classify.schema import RuleSettings
from services.domain import REPLY_LANGUAGES
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


def _stamps(settings: RuleSettings, received_at: datetime) -> dict[str, str]:
    local = received_at.astimezone(ZoneInfo(settings.timezone))
    return {
        "received_date": local.strftime("%d.%m.%Y"),
        "received_time": local.strftime("%H:%M"),
        "received_iso": local.isoformat(timespec="minutes"),
    }


_STAMP_NAMES = ("received_date", "received_time", "received_iso")
MAX_SKELETONS = 512
# A slot's marker: control characters no template or setting contains; a link's looks like a URL, so that
# `paragraphs` makes it a link exactly as it does the real one.
_MARKER = re.compile(r"(?:https://slot\.invalid/)?\x1a(\d+)\x1a")


def _marker(index: int, name: str) -> str:
    return f"https://slot.invalid/\x1a{index}\x1a" if name.startswith("link:") else f"\x1a{index}\x1a"


@dataclass(frozen=True)
class _Minute:
    """What a reply takes from the minute a mail arrived: received_* and each channel's office-hours state."""

    settings: RuleSettings
    stamps: tuple[str, ...]
    hours: tuple[tuple[str, bool, datetime | None], ...]

    @classmethod
    def of(cls, settings: RuleSettings, received_at: datetime) -> _Minute:
        stamps = _stamps(settings, received_at)
        zone = ZoneInfo(settings.timezone)
        hours = []
        for name, info in settings.channels.items():
            if info.hours is not None:
                status = office_status(info.hours, settings.holidays, zone, received_at)
                hours.append((name, status.open_now, status.next_opening))
        return cls(settings, tuple(stamps[name] for name in _STAMP_NAMES), tuple(hours))


@dataclass(frozen=True)
class _MailValues:
    """A mail's own values for the slots, and the shape (office hours, which links exist) its skeleton needs."""

    names: tuple[str, ...]
    values: tuple[str, ...]
    shape: tuple[object, ...]

    @classmethod
    def of(cls, settings: RuleSettings, minute: _Minute, reference: str, links: dict[str, str] | None) -> _MailValues:
        names = ["reference", *_STAMP_NAMES]
        values = [reference, *minute.stamps]
        for name, info in settings.channels.items():
            link = (links or {}).get(name, info.url or "")
            if link:  # an empty link is part of the shape (`{% if channels.x.link %}`), not a slot
                names.append(f"link:{name}")
                values.append(link)
        return cls(tuple(names), tuple(values), (tuple(names), minute.hours))


@dataclass
class _SlotUse:
    touched: bool = False


_PRINTING = frozenset({"__class__", "__html__", "__html_format__"})


class _Slot(str):
    """A marker standing in for a per-mail value while a skeleton renders.

    Printing it (`{{ reference }}`, escaped or not) is all a skeleton may do with it; any other use (a filter,
    a comparison, its length) marks the skeleton unusable, because the real value could behave differently.
    """

    use: _SlotUse

    def __new__(cls, marker: str, use: _SlotUse) -> _Slot:
        slot = super().__new__(cls, marker)
        object.__setattr__(slot, "use", use)
        return slot

    def __radd__(self, other: str) -> str:
        object.__getattribute__(self, "use").touched = True
        return other + str(self)

    def __getattribute__(self, name: str) -> Any:
        if name not in _PRINTING and name != "use":
            object.__getattribute__(self, "use").touched = True
        return super().__getattribute__(name)


def _touching(name: str) -> Callable[..., Any]:
    method = getattr(str, name)

    def touched(self: _Slot, *args: Any) -> Any:
        object.__getattribute__(self, "use").touched = True
        return method(self, *args)

    return touched


for _name in (
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__", "__len__", "__contains__",
    "__getitem__", "__iter__", "__add__", "__mul__", "__rmul__", "__mod__", "__format__",
):  # fmt: skip
    setattr(_Slot, _name, _touching(_name))


@dataclass(frozen=True)
class _Skeleton:
    """A rendered reply with slots: text and page split at the markers, so a fill is one join per part."""

    settings: RuleSettings
    usable: bool
    subject: str = ""
    language: str = ""
    text: tuple[str | int, ...] = ()
    html: tuple[str | int, ...] = ()

    @classmethod
    def unusable(cls, settings: RuleSettings) -> _Skeleton:
        return cls(settings, usable=False)

    @classmethod
    def of(cls, settings: RuleSettings, rendered: RenderedReply, slots: int) -> _Skeleton:
        parts = (_split(rendered.text, slots), _split(rendered.html, slots))
        if parts[0] is None or parts[1] is None or "\x1a" in rendered.subject:
            return cls.unusable(settings)
        return cls(settings, True, rendered.subject, rendered.language, parts[0], parts[1])

    def fill(self, values: tuple[str, ...]) -> RenderedReply:
        escaped = [str(escape(value)) for value in values]
        return RenderedReply(
            subject=self.subject,
            text="".join(part if isinstance(part, str) else values[part] for part in self.text),
            html="".join(part if isinstance(part, str) else escaped[part] for part in self.html),
            language=self.language,
        )


def _split(rendered: str, slots: int) -> tuple[str | int, ...] | None:
    """Literal text and slot numbers in order; None if a marker was cut or changed on its way through."""
    pieces = _MARKER.split(rendered)
    parts: list[str | int] = []
    for index, piece in enumerate(pieces):
        if index % 2:
            if int(piece) >= slots:
                return None
            parts.append(int(piece))
        elif "\x1a" in piece or "slot.invalid" in piece:
            return None
        elif piece:
            parts.append(piece)
    return tuple(parts)


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
    """Jinja2 environment over templates/replies; HTML templates autoescape, text ones do not.

    Without auto-reload (the rule set's own renderer) replies come from skeletons (`_render_cached`).
    """

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
        # Reply skeletons need templates that cannot change under them: the rule set's renderer (no auto-reload)
        # is made for one rule-set version, so its skeletons are per (template, language, version).
        self._skeletons: dict[tuple[str, str, tuple[object, ...]], _Skeleton] | None = None if auto_reload else {}
        self._minutes: dict[int, _Minute] = {}
        self._storing = threading.Lock()
        self.cache_hits = 0  # replies filled from a skeleton
        self.cache_refusals = 0  # skeletons found unusable (rendered through Jinja for every mail instead)

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
        stamps: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Every variable a reply template gets (templates/README.md); office hours as at `received_at`.

        `stamps` stands in for the received_* values (a reply skeleton renders markers there).
        """
        return {
            "organisation": settings.organisation,
            "channels": _channel_context(settings, language, received_at, links or {}),
            **(stamps or _stamps(settings, received_at)),
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
        if self._skeletons is None:
            return self._assemble(template, language, settings, received_at, reference, links)
        return self._render_cached(template, language, settings, received_at, reference, links)

    def _assemble(
        self,
        template: str,
        language: str,
        settings: RuleSettings,
        received_at: datetime,
        reference: str,
        links: dict[str, str] | None,
        stamps: dict[str, str] | None = None,
    ) -> RenderedReply:
        """The reply rendered through Jinja, as it always was; with markers for values, a skeleton's source."""
        text, html = self._render_one(
            template, language, self.context(settings, language, received_at, reference, links, stamps)
        )
        if language != "de":
            german = self.context(settings, "de", received_at, reference, links, stamps)
            german_text, german_html = self._render_one(template, "de", german)
            separator = GERMAN_BINDING[language]
            text = f"{text}\n{'-' * 60}\n{separator}\n{'-' * 60}\n\n{german_text}"
            html = f"{html}\n<hr>\n<p><strong>{escape(separator)}</strong></p>\n{german_html}"
        subject = SUBJECTS.get(language, SUBJECTS["de"]).format(organisation=settings.organisation)
        if language != "de":
            subject = f"{subject} / {SUBJECTS['de'].format(organisation=settings.organisation)}"
        page = self.env.get_template("replies/_page.html.j2").render(body=Markup(html), lang=language)  # noqa: S704
        return RenderedReply(subject=subject, text=text, html=page, language=language)

    def _render_cached(
        self,
        template: str,
        language: str,
        settings: RuleSettings,
        received_at: datetime,
        reference: str,
        links: dict[str, str] | None,
    ) -> RenderedReply:
        """The reply from its skeleton: rendered once per template, language and office-hours state, then only
        the mail's own values (reference, received date and time, link tokens) are put into their slots.

        The first mail of each skeleton is also rendered through Jinja and must come out the same, else that
        skeleton is never used (a template that does more with a per-mail value than print it).
        """
        assert self._skeletons is not None
        mail = _MailValues.of(settings, self._minute(settings, received_at), reference, links)
        key = (template, language, mail.shape)
        skeleton = self._skeletons.get(key)
        if skeleton is not None and skeleton.settings is settings:
            if skeleton.usable:
                self.cache_hits += 1
                return skeleton.fill(mail.values)
            return self._assemble(template, language, settings, received_at, reference, links)
        direct = self._assemble(template, language, settings, received_at, reference, links)
        skeleton = self._skeleton(template, language, settings, received_at, mail)
        if skeleton.usable and skeleton.fill(mail.values) != direct:
            skeleton = _Skeleton.unusable(settings)
        with self._storing:  # the workbench previews from threads
            self.cache_refusals += not skeleton.usable
            if len(self._skeletons) >= MAX_SKELETONS:
                del self._skeletons[next(iter(self._skeletons))]  # the oldest: office-hours states move on
            self._skeletons[key] = skeleton
        return direct

    def _minute(self, settings: RuleSettings, received_at: datetime) -> _Minute:
        """office_status is most of a cached reply's cost, and the same for every mail of a minute."""
        key = int(received_at.timestamp() // 60)
        minute = self._minutes.get(key)
        if minute is None or minute.settings is not settings:
            if len(self._minutes) >= MAX_SKELETONS:
                self._minutes.clear()
            minute = self._minutes[key] = _Minute.of(settings, received_at)
        return minute

    def _skeleton(
        self, template: str, language: str, settings: RuleSettings, received_at: datetime, mail: _MailValues
    ) -> _Skeleton:
        use = _SlotUse()
        slots = [_Slot(_marker(index, name), use) for index, name in enumerate(mail.names)]
        by_name = dict(zip(mail.names, slots, strict=True))
        links = {name: by_name.get(f"link:{name}", "") for name in settings.channels}
        stamps: dict[str, str] = {name: by_name[name] for name in _STAMP_NAMES}
        try:
            rendered = self._assemble(template, language, settings, received_at, by_name["reference"], links, stamps)
        except Exception:  # a template that fails on a marker fails on the mail too: the direct path says how
            return _Skeleton.unusable(settings)
        if use.touched:
            return _Skeleton.unusable(settings)
        return _Skeleton.of(settings, rendered, len(slots))

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
            for language in REPLY_LANGUAGES:
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
