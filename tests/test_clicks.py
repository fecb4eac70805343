"""/r/ clicks: one canonical token per reply and channel, counted off the request path in batches, flushed at shutdown."""

from __future__ import annotations

import base64
import re

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from services.links import make_token, read_token
from services.metrics import PROCESS_REGISTRY
from services.store.models import LinkClick, utcnow
from services.web import clicks
from services.web.app import CLICKS, create_app
from services.web.clicks import Click, ClickRecorder
from tests.support import AUTH, Pipeline, make_mail

SECRET = b"test-key"
MESSAGE = "0123456789abcdef0123456789abcdef"


def variants(token: str) -> list[str]:
    """Strings a lenient base64 decoder turns into the same bytes as the token."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    standard = base64.b64encode(raw).decode().rstrip("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # when the bytes do not fill the last character, its low bits are ignored by the decoder
    tweaked = token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1] if (len(raw) * 8) % 6 else None
    found = [
        token + "=" * (-len(token) % 4 or 4),
        token + "==",
        token[:10] + "!" + token[10:],
        token[:10] + "." + token[10:],
        token[:5] + " " + token[5:],
        standard if standard != token else token.replace("-", "+").replace("_", "/") + "+",
    ]
    return found + ([tweaked] if tweaked else [])


def test_only_the_canonical_spelling_of_a_token_is_read() -> None:
    tokens = [make_token(SECRET, f"{n:032x}", channel) for n in range(40) for channel in ("portal", "upload")]
    token = next(t for t in tokens if "-" in t or "_" in t)  # one whose other alphabet differs
    assert read_token(SECRET, token) is not None
    for variant in variants(token):
        assert variant != token
        assert read_token(SECRET, variant) is None, variant
    # every token make_token writes reads back
    assert all(read_token(SECRET, t) is not None for t in tokens)


VALID = make_token(SECRET, MESSAGE, "upload")


@settings(max_examples=400, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=len(VALID)),
    inserted=st.text(min_size=0, max_size=3),
    cut=st.integers(min_value=0, max_value=2),
)
def test_a_readable_token_is_always_the_one_make_token_writes(position: int, inserted: str, cut: int) -> None:
    spelling = VALID[:position] + inserted + VALID[position + cut :]
    parsed = read_token(SECRET, spelling)
    assert parsed is None or make_token(SECRET, *parsed) == spelling


async def test_token_variants_are_redirected_but_counted_once(pipeline: Pipeline) -> None:
    await pipeline.send(
        make_mail(
            subject="Unterlagen", body="Anbei die Nachweise.", attachment=("n.pdf", "application/pdf", b"%PDF-1.4")
        )
    )
    await pipeline.work()
    [reply] = pipeline.relay.received
    [token, *_] = re.findall(r"/r/([A-Za-z0-9_-]+)", reply.message.get_body(("plain",)).get_content())
    app = create_app(pipeline.deps.settings, pipeline.deps.engine, pipeline.pool, pipeline.deps.rules)
    async with TestClient(TestServer(app)) as client:
        for spelling in [token, *variants(token), token]:
            response = await client.get("/r/" + spelling.replace(" ", "%20"), allow_redirects=False)
            assert response.status in (302, 404)  # a mangled link is sent to the overview, or not found
        await app[CLICKS].flush()
        summary = await (await client.get("/api/v1/summary", headers=AUTH)).json()
    assert summary["clicks"] == 2 and summary["links_opened"] == 1 and summary["replies_clicked"] == 1
    with Session(pipeline.deps.engine) as session:
        [row] = session.exec(select(LinkClick).where(LinkClick.message_id == read_token(SECRET, token)[0])).all()  # type: ignore[index]
    assert row.token == token and row.clicks == 2


async def test_clicks_are_queued_written_in_batches_and_flushed_at_shutdown(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    await pipeline.send(make_mail(subject="Neue Adresse", body="Ich bin umgezogen."))
    await pipeline.work()
    [reply] = pipeline.relay.received
    token = re.findall(r"/r/([A-Za-z0-9_-]+)", reply.message.get_body(("plain",)).get_content())[0]
    message_id, channel = read_token(SECRET, token) or ("", "")
    engine = pipeline.deps.engine

    def stored() -> int:
        with Session(engine) as session:
            row = session.get(LinkClick, token)
            return 0 if row is None else row.clicks

    # the recorder holds clicks in memory until a flush, and writes them batch_size at a time
    batches: list[int] = []
    write = clicks.record_clicks

    def counting(engine_: object, batch: list[Click]) -> None:
        batches.append(len(batch))
        write(engine, batch)

    monkeypatch.setattr(clicks, "record_clicks", counting)
    recorder = ClickRecorder(engine, max_queued=5, batch_size=2)
    dropped_before = PROCESS_REGISTRY.get_sample_value("channelshift_clicks_dropped_total") or 0
    for _ in range(7):
        recorder.add(Click(token, message_id, channel, utcnow()))
    assert PROCESS_REGISTRY.get_sample_value("channelshift_clicks_dropped_total") == dropped_before + 2  # full queue
    assert stored() == 0
    await recorder.flush()
    assert batches == [2, 2, 1] and stored() == 5

    # through the app: redirects answer without writing; the app's shutdown writes what is still queued
    monkeypatch.setattr(clicks, "record_clicks", write)
    app = create_app(pipeline.deps.settings, engine, pipeline.pool, pipeline.deps.rules)
    client = TestClient(TestServer(app))
    await client.start_server()
    for _ in range(3):
        assert (await client.get(f"/r/{token}", allow_redirects=False)).status == 302
    await client.close()
    assert app[CLICKS].queue.empty() and stored() == 8
    summary_app = create_app(pipeline.deps.settings, engine, pipeline.pool, pipeline.deps.rules)
    async with TestClient(TestServer(summary_app)) as reader:
        summary = await (await reader.get("/api/v1/summary", headers=AUTH)).json()
    assert summary["clicks"] == 8 and summary["links_opened"] == 1
