"""The read side for one message and for failed deliveries: what the message API and /readyz show."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from services.store.models import Decision, Delivery, JobState, Message, Reply


def failed_deliveries(engine: Engine) -> dict[str, Any]:
    """Originals the staff relay refused, wrapper included: how many, and the newest ids to look them up by."""
    failed = col(Delivery.state) == JobState.FAILED
    with Session(engine) as session:
        count = session.exec(select(func.count()).select_from(Delivery).where(failed)).one()
        newest = session.exec(
            select(Delivery.message_id).where(failed).order_by(col(Delivery.created_at).desc()).limit(20)
        ).all()
    return {"failed": int(count), "failed_ids": list(newest)}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def message_view(engine: Engine, message_id: str) -> dict[str, Any] | None:
    """One message's state, decision, reply and delivery, without its content (the API's message view)."""
    with Session(engine) as session:
        message = session.get(Message, message_id)
        if message is None:
            return None
        decision = session.get(Decision, message_id)
        reply = session.get(Reply, message_id)
        delivery = session.get(Delivery, message_id)
        view: dict[str, Any] = {
            "id": message.id,
            "state": message.state,
            "protocol": message.protocol,
            "received_at": _iso(message.received_at),
            "size": message.size,
            "recipients": len(message.rcpt_tos),
            "purged": message.raw is None,
            "decision": None,
            "reply": None,
            "delivery": None,
        }
        if decision is not None:
            view["decision"] = {
                "category": decision.category,
                "channel": decision.channel,
                "rule": decision.rule_id,
                "ruleset_version": decision.ruleset_version,
                "template": decision.template,
                "priority": decision.priority,
                "language": decision.language,
                "reply": decision.reply,
                "suppressed": decision.suppressed,
                "deliver_to": decision.deliver_to,
                "tags": decision.tags,
                "defects": decision.defects,
                "decided_at": _iso(decision.decided_at),
            }
        if reply is not None:
            view["reply"] = {
                "state": reply.state,
                "attempts": reply.attempts,
                "sent_at": _iso(reply.sent_at),
                "error": reply.error,
            }
        if delivery is not None:
            view["delivery"] = {
                "state": delivery.state,
                "attempts": delivery.attempts,
                "delivered_at": _iso(delivery.delivered_at),
                "error": delivery.error,
            }
        return view
