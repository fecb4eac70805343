"""The OpenAPI 3.1 document of /api/v1: paths beside the handlers, answers generated from services.web.schemas."""

from __future__ import annotations

from typing import Any

from services.domain import Outcome
from services.store import reports
from services.web.schemas import component_schemas

_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_DATE = {"type": "string", "format": "date"}


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _DATE}


_PERIOD = [
    _query("from", "first local day (default: 29 days before `to`)"),
    _query("to", "last local day, inclusive (default: today)"),
]
_VOLUME_PARAMS = [
    *_PERIOD,
    _query("group_by", "bucket size", {"type": "string", "enum": list(reports.GROUP_BY), "default": "day"}),
    _query(
        "by",
        "series key",
        {"type": "string", "enum": list(reports.BY), "default": "category"},
    ),
    _query(
        "outcome",
        "counter outcome, or a prefix ending in ':' (e.g. suppressed:)",
        {"type": "string", "default": Outcome.RECEIVED.value},
    ),
    _query("mailbox", "only this served mailbox", {"type": "string"}),
    _query("category", "only this category", {"type": "string"}),
    _query("channel", "only this channel", {"type": "string"}),
]
_RULESET_VERSION = {
    "type": "object",
    "properties": {
        "version": {"type": "string", "description": "the rule-set version hash each decision stores"},
        "activated_at": {"type": "string", "format": "date-time", "description": "first activation in any process"},
        "activated_by": {"type": "string", "description": "role that activated it first: serve, gateway, ..."},
        "previous_version": {"type": ["string", "null"], "description": "the set active before it"},
        "model_checked": {"type": "boolean", "description": "a model-training process (worker) has loaded it"},
        "file_count": {"type": "integer"},
        "changed": {
            "type": "array",
            "description": "files changed against previous_version (rules/, templates/, examples/)",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "change": {"type": "string", "enum": ["added", "removed", "modified"]},
                },
            },
        },
        "warnings": {"type": "array", "items": {"type": "string"}, "description": "validation warnings"},
    },
}
_RESPONSES_COMMON = {
    "400": {"description": "bad parameter", "content": _JSON_ERROR},
    "401": {"description": "token missing or wrong", "content": _JSON_ERROR},
    "429": {
        "description": "too many failed logins from this client (CHANNELSHIFT_LOGIN_MAX_FAILURES); even a right token"
        " waits until the oldest failure ages out",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        "content": _JSON_ERROR,
    },
}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "channelshift API",
        "version": "1",
        "description": "Volumes and channel-shift measures from the hourly counter rollup. No personal data.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {**component_schemas(), "RuleSetVersion": _RULESET_VERSION},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": {"security": [], "summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {
            "get": {
                "security": [],
                "summary": "Database, Redis and rule set status",
                "description": "checks.rules: version, source (files | last-good | null), reload_errors as "
                "file:line: field: message, and `problem` when the files do not validate",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/api/v1/messages/{message_id}": {
            "get": {
                "summary": "State and decision of one message (no addresses, no content)",
                "parameters": [
                    {
                        "name": "message_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the message",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageView"}}},
                    },
                    "404": {"description": "unknown id", "content": _JSON_ERROR},
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/rulesets": {
            "get": {
                "summary": "Rule sets that became active, newest first (at most 200)",
                "responses": {
                    "200": {
                        "description": "versions",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "versions": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/RuleSetVersion"},
                                        }
                                    },
                                }
                            }
                        },
                    },
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/rulesets/{version}": {
            "get": {
                "summary": "One rule-set version: its files and the text diff against its predecessor",
                "description": "diff: unified diff of the rule and template files (example mails are not shown)",
                "parameters": [
                    {
                        "name": "version",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{1,64}$"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the version",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "allOf": [
                                        {"$ref": "#/components/schemas/RuleSetVersion"},
                                        {
                                            "type": "object",
                                            "properties": {
                                                "files": {
                                                    "type": "array",
                                                    "items": {
                                                        "type": "object",
                                                        "properties": {
                                                            "path": {"type": "string"},
                                                            "sha256": {"type": "string"},
                                                            "size": {"type": "integer"},
                                                        },
                                                    },
                                                },
                                                "diff": {"type": "string"},
                                            },
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "404": {"description": "unknown version", "content": _JSON_ERROR},
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/volumes": {
            "get": {
                "summary": "Counts per day/week/month, split by mailbox, category, channel or outcome",
                "parameters": _VOLUME_PARAMS,
                "responses": {
                    "200": {
                        "description": "series",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Volumes"}}},
                    },
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/volumes.csv": {
            "get": {
                "summary": "The same series as CSV (period, key, outcome, count)",
                "parameters": _VOLUME_PARAMS,
                "responses": {
                    "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/summary": {
            "get": {
                "summary": "Totals, reply rate, suppression reasons, repeat senders, click-through",
                "parameters": _PERIOD,
                "responses": {
                    "200": {
                        "description": "summary",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Summary"}}},
                    },
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/summary.csv": {
            "get": {
                "summary": "The summary as CSV: one row for all mail, one per category and per channel",
                "description": "columns: from, to, by (all|category|channel), key, then the Figures fields "
                "received .. repeat_rate_30d (empty for a share without denominator)",
                "parameters": _PERIOD,
                "responses": {
                    "200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}},
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/api/v1/compare": {
            "get": {
                "summary": "Two periods side by side (before/after a reachability change) with relative change",
                "description": "Without dates: from settings.cutover to today, against as many days before it.",
                "parameters": [
                    _query("before_from", "first day of the first period"),
                    _query("before_to", "last day, inclusive"),
                    _query("after_from", "first day of the second period"),
                    _query("after_to", "last day, inclusive"),
                ],
                "responses": {
                    "200": {
                        "description": "comparison",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Compare"}}},
                    },
                    **_RESPONSES_COMMON,
                },
            }
        },
    },
}
