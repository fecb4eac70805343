"""`attachments:`: how many attachments of the given types and file names the mail carries (default: at least 1)."""

from __future__ import annotations

import fnmatch

from pydantic import Field

from services.classify.conditions.base import Check, ConditionKind, Context, Strict, leaf
from services.classify.facts import MailFacts


class AttachmentMatch(Strict):
    min_count: int | None = Field(default=None, ge=0)
    max_count: int | None = Field(default=None, ge=0)
    mime_types: list[str] = Field(default_factory=list)
    filename: list[str] = Field(default_factory=list)


def _compile(spec: AttachmentMatch, path: str, _context: Context) -> Check:
    mime_types = [m.lower() for m in spec.mime_types]
    filenames = [g.lower() for g in spec.filename]
    minimum = spec.min_count if spec.min_count is not None else 1

    def explain(facts: MailFacts) -> tuple[bool, str]:
        found = [
            a
            for a in facts.mail.attachments
            if (not mime_types or any(fnmatch.fnmatchcase(a.content_type, m) for m in mime_types))
            and (not filenames or any(fnmatch.fnmatch(a.filename.lower(), g) for g in filenames))
        ]
        ok = len(found) >= minimum and (spec.max_count is None or len(found) <= spec.max_count)
        return ok, f"{len(found)} matching"

    return leaf(path + ".attachments", lambda facts: explain(facts)[0], explain)


KIND: ConditionKind[AttachmentMatch] = ConditionKind(key="attachments", schema=AttachmentMatch, compile=_compile)
