"""HTTP: health, readiness (database, Redis, rules), message API behind the admin token, OpenAPI document."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.support import AUTH, Pipeline, make_mail


async def test_health_and_ready(client: TestClient[object, object]) -> None:
    assert (await client.get("/healthz")).status == 200
    response = await client.get("/readyz")
    body = await response.json()
    assert response.status == 200 and body["ready"] is True
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"
    assert body["checks"]["rules"]["reload_errors"] == []


async def test_message_api_needs_token_and_shows_no_personal_data(
    client: TestClient[object, object], pipeline: Pipeline
) -> None:
    await pipeline.send(
        make_mail(subject="Geheimer Betreff", body="Wann haben Sie geöffnet?"), sender="private.person@example.org"
    )
    await pipeline.work()
    from sqlmodel import Session, select

    from services.store.models import Message

    with Session(pipeline.deps.engine) as session:
        message_id = session.exec(select(Message.id)).one()
    assert (await client.get(f"/api/v1/messages/{message_id}")).status == 401
    wrong = await client.get(f"/api/v1/messages/{message_id}", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    response = await client.get(f"/api/v1/messages/{message_id}", headers=AUTH)
    assert response.status == 200
    text = await response.text()
    body = await response.json()
    assert body["state"] == "delivered"
    assert body["decision"]["category"] == "general" and body["reply"]["state"] == "sent"
    assert "private.person" not in text and "Geheimer" not in text
    missing = await client.get("/api/v1/messages/" + "0" * 32, headers=AUTH)
    assert missing.status == 404


async def test_openapi_document(client: TestClient[object, object]) -> None:
    response = await client.get("/api/v1/openapi.json", headers=AUTH)
    document = await response.json()
    assert document["openapi"].startswith("3.")
    assert "/api/v1/messages/{message_id}" in document["paths"]
