"""`body:`: the mail's own words (no quoted reply, no signature) match a keyword or a regex."""

from __future__ import annotations

from services.classify.conditions.base import ConditionKind
from services.classify.conditions.textmatch import TextMatch, text_kind

KIND: ConditionKind[TextMatch] = text_kind("body")
