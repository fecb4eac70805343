"""The OpenAPI document is the API: every /api/v1 route is described, and every answer matches its schema exactly."""

from __future__ import annotations

from typing import Any

import jsonschema
from aiohttp.test_utils import TestClient
from sqlmodel import Session, select

from services.store.models import Message
from services.web.openapi import OPENAPI
from tests.support import AUTH, Pipeline, make_mail


def _inline(schema: Any, components: dict[str, Any]) -> Any:
    """The schema with every `#/components/schemas/` reference replaced by its target, and `allOf` merged."""
    if isinstance(schema, list):
        return [_inline(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline(components[schema["$ref"].rsplit("/", 1)[1]], components)
    inlined = {key: _inline(value, components) for key, value in schema.items()}
    if "allOf" in inlined:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in inlined.pop("allOf"):
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        inlined = {**merged, **inlined}
    return inlined


def _strict(schema: Any) -> Any:
    """Exactly the documented keys: objects with listed properties require them all and allow no others."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if strict.get("properties") and "additionalProperties" not in strict:
        strict["additionalProperties"] = False
        strict["required"] = sorted(set(strict.get("required", [])) | set(strict["properties"]))
    return strict


def _response_schema(path: str, status: int) -> dict[str, Any]:
    response = OPENAPI["paths"][path]["get"]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    return dict(_strict(_inline(schema, OPENAPI["components"]["schemas"])))


async def test_every_api_route_is_documented(client: TestClient[object, object]) -> None:
    routes = {
        resource.canonical
        for resource in client.app.router.resources()  # type: ignore[union-attr]
        if resource.canonical.startswith("/api/v1/")
    }
    documented = {path for path in OPENAPI["paths"] if path.startswith("/api/v1/")}
    assert routes - documented - {"/api/v1/openapi.json"} == set()
    assert documented - routes == set()


async def test_every_documented_answer_matches_its_schema_exactly(
    client: TestClient[object, object], pipeline: Pipeline
) -> None:
    await pipeline.send(make_mail(subject="Termin", body="Ich möchte meinen Termin verschieben."))
    await pipeline.send(make_mail(subject="Unterlagen", body="Anbei die Kontoauszüge."), sender="b@example.org")
    await pipeline.work()
    with Session(pipeline.deps.engine) as session:
        message_id = session.exec(select(Message.id)).first()
    versions = await (await client.get("/api/v1/rulesets", headers=AUTH)).json()
    calls: dict[str, str] = {
        "/api/v1/messages/{message_id}": f"/api/v1/messages/{message_id}",
        "/api/v1/volumes": "/api/v1/volumes?by=category",
        "/api/v1/summary": "/api/v1/summary",
        "/api/v1/compare": "/api/v1/compare?before_from=2026-01-01&before_to=2026-06-30"
        "&after_from=2026-07-01&after_to=2026-12-31",
        "/api/v1/rulesets": "/api/v1/rulesets",
    }
    if versions["versions"]:
        calls["/api/v1/rulesets/{version}"] = f"/api/v1/rulesets/{versions['versions'][0]['version']}"
    json_paths = {
        path
        for path, item in OPENAPI["paths"].items()
        if path.startswith("/api/v1/") and "application/json" in item["get"]["responses"]["200"].get("content", {})
    }
    assert json_paths - set(calls) <= {"/api/v1/rulesets/{version}"}
    for path, url in calls.items():
        response = await client.get(url, headers=AUTH)
        assert response.status == 200, (url, await response.text())
        jsonschema.validate(await response.json(), _response_schema(path, 200))
    for path, url in {"/api/v1/messages/{message_id}": "/api/v1/messages/" + "0" * 32}.items():
        response = await client.get(url, headers=AUTH)
        assert response.status == 404
        jsonschema.validate(await response.json(), _response_schema(path, 404))
