"""`text:`: the subject or the own words match a keyword or a regex."""

from __future__ import annotations

from services.classify.conditions.base import ConditionKind
from services.classify.conditions.textmatch import TextMatch, text_kind

KIND: ConditionKind[TextMatch] = text_kind("text")
