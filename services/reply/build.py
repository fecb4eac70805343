"""The exact reply a decision sends: click links, rendering and MIME in one call, for the worker and the preview."""

from __future__ import annotations

from datetime import datetime
from email.errors import MessageError
from email.message import Message

from services.classify.schema import RuleSettings
from services.links import make_token
from services.reply.compose import compose_reply
from services.reply.render import ReplyRenderer


class ReplyUnbuildable(Exception):
    """The reply cannot be built (template error, bad address): retrying cannot help, so it fails for good."""


def tracked_links(settings: RuleSettings, public_url: str, key: bytes, message_id: str) -> dict[str, str]:
    """Per-channel /r/<token> redirect links, for channels with a URL (click-through counting)."""
    base = public_url.rstrip("/")
    return {
        name: f"{base}/r/{make_token(key, message_id, name)}" for name, info in settings.channels.items() if info.url
    }


def build_reply(
    renderer: ReplyRenderer,
    settings: RuleSettings,
    *,
    template: str,
    language: str,
    received_at: datetime,
    message_id: str,
    from_address: str,
    to_address: str,
    reply_message_id: str,
    in_reply_to: str | None,
    references: str | None,
    links: dict[str, str] | None = None,
) -> Message:
    """Render `template` as at `received_at` (office hours included) and compose it; raises ReplyUnbuildable."""
    try:
        rendered = renderer.render(template, language, settings, received_at, reference=message_id[:12], links=links)
    except Exception as exc:  # a template edited since the rule set loaded: the reply fails, visibly, for good
        raise ReplyUnbuildable(f"reply cannot be rendered: {type(exc).__name__}: {exc}"[:500]) from exc
    try:
        return compose_reply(
            rendered,
            in_reply_to=in_reply_to,
            references=references,
            from_name=settings.organisation,
            from_address=from_address,
            to_address=to_address,
            reply_message_id=reply_message_id,
        )
    except (ValueError, MessageError) as exc:
        # e.g. a non-ASCII local part in the sender's address
        raise ReplyUnbuildable(f"reply cannot be composed: {type(exc).__name__}") from exc
