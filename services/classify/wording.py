"""Validation errors in words a service manager understands: unknown keys with "did you mean", plain patterns."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel

# what each field pattern of the schema allows, said in words
_PATTERNS = {
    r"^[a-z0-9][a-z0-9_.-]*$": "lowercase letters, digits, '.', '-' and '_', starting with a letter or digit",
}


def plain_message(error: dict[str, Any], root: type[BaseModel]) -> str:
    """The message for one pydantic error of a rule file whose top-level model is `root`."""
    kind = error.get("type", "")
    location = tuple(error.get("loc", ()))
    given = error.get("input")
    if kind == "extra_forbidden" and location:
        key = str(location[-1])
        allowed = allowed_keys(root, location[:-1])
        message = f"unknown key {key!r}"
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6) if allowed else []
        if close:
            message += f" (did you mean {close[0]!r}?)"
        if allowed:
            message += f"; allowed here: {', '.join(sorted(allowed))}"
        return message
    if kind == "string_pattern_mismatch":
        pattern = str((error.get("ctx") or {}).get("pattern", ""))
        return f"{given!r} is not allowed here: use only {_PATTERNS.get(pattern, f'text matching {pattern}')}"
    if kind == "missing":
        return "this key is required here"
    if kind in ("string_too_long", "too_long"):
        limit = (error.get("ctx") or {}).get("max_length")
        return f"too long: at most {limit} characters" if limit else str(error.get("msg", ""))
    if kind in ("string_type", "list_type", "dict_type", "model_type", "bool_type", "int_type", "float_type"):
        wanted = {
            "string_type": "a text",
            "list_type": "a list (one '- item' per line, or [a, b])",
            "dict_type": "a set of 'key: value' lines",
            "model_type": "a set of 'key: value' lines",
            "bool_type": "true or false",
            "int_type": "a whole number",
            "float_type": "a number",
        }[kind]
        return f"expected {wanted}, got {given!r}"[:300]
    if kind in ("literal_error", "enum"):
        expected = str((error.get("ctx") or {}).get("expected", ""))
        options = [part.strip().strip("'") for part in expected.replace(" or ", ",").split(",") if part.strip()]
        close = difflib.get_close_matches(str(given), options, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{given!r} is not one of {expected}{hint}"
    message = str(error.get("msg", ""))
    return message.removeprefix("Value error, ")


def allowed_keys(root: type[BaseModel], location: tuple[Any, ...]) -> list[str]:
    """The keys the model at `location` (a pydantic error location without its last part) accepts."""
    model: type[BaseModel] | None = root
    for part in location:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        model = _model_in(field.annotation)
    if model is None:
        return []
    return [field.alias or name for name, field in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: itself, or inside Optional, list[...] or dict[..., ...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return None
    for argument in typing.get_args(annotation):
        found = _model_in(argument)
        if found is not None:
            return found
    return None
