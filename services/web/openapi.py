"""The OpenAPI 3.1 document of /api/v1, kept beside the handlers it describes."""

from __future__ import annotations

from typing import Any

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "channelshift API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": _ERROR},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": {"security": [], "summary": "Liveness", "responses": {"200": {"description": "alive"}}}},
        "/readyz": {
            "get": {
                "security": [],
                "summary": "Database, Redis and rule set status",
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
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "string"},
                                        "state": {
                                            "type": "string",
                                            "enum": ["received", "classified", "delivered", "held"],
                                        },
                                        "decision": {"type": ["object", "null"]},
                                        "reply": {"type": ["object", "null"]},
                                        "delivery": {"type": ["object", "null"]},
                                    },
                                }
                            }
                        },
                    },
                    "401": {"description": "token missing"},
                    "404": {
                        "description": "unknown id",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    },
                },
            }
        },
    },
}
