"""Click-through per reply cohort: replies on day 1, clicks on day 3; every number of API, CSV, /metrics, page."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import Session

import services.web.clicks
from services.links import read_token
from services.store import reports
from services.store.models import Decision
from services.web.api import SUMMARY_COLUMNS
from services.web.app import CLICKS
from services.web.dashboard import View, dashboard_data
from services.web.openapi import OPENAPI
from services.web.replylinks import unlinked_categories
from tests.support import AUTH, SERVED, Pipeline, make_mail, send

BERLIN = ZoneInfo("Europe/Berlin")
PDF = ("n.pdf", "application/pdf", b"%PDF-1.4")
# (sender, subject, body, attachment): their categories and channels are asserted below
DAY_ONE = [
    ("doc1@example.org", "Unterlagen", "Anbei meine Kontoauszüge wie angefordert.", PDF),
    ("doc2@example.org", "Unterlagen", "Anbei die Lohnabrechnung.", PDF),
    ("termin@example.org", "Termin verschieben", "Kann ich meinen Termin am Donnerstag verschieben?", None),
    ("frage@example.org", "Frage", "Wann haben Sie geöffnet?", None),
    ("umzug@example.org", "Neue Adresse", "Ich bin umgezogen, meine neue Adresse lautet Beispielweg 1.", None),
    ("not@example.org", "Dringend", "Ich habe nichts mehr zu essen für meine Kinder.", None),  # reply without link
]


async def _send_at(port: int, moment: datetime, sender: str, subject: str, body: str, **extra: object) -> None:
    headers = {"X-Channelshift-Demo-Received": moment.isoformat(), **extra.pop("headers", {})}  # type: ignore[dict-item]
    data = make_mail(subject=subject, body=body, sender=sender, headers=headers, **extra)  # type: ignore[arg-type]
    await send(port, sender, [SERVED], data)


async def test_click_through_is_counted_per_reply_cohort(
    pipeline: Pipeline, client: TestClient[object, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, port = await pipeline.extra_gateway(demo_dates=True)
    day1 = datetime.now(BERLIN).date() - timedelta(days=10)
    day3 = day1 + timedelta(days=2)
    noon1 = datetime.combine(day1, time(12), BERLIN)
    for sender, subject, body, attachment in DAY_ONE:
        await _send_at(port, noon1, sender, subject, body, attachment=attachment)
    await _send_at(
        port, noon1, "urlaub@example.org", "Abwesend", "Bin weg.", headers={"Auto-Submitted": "auto-replied"}
    )
    await pipeline.work()
    # day 3: the appointment sender writes again (a repeat sender; the same reply is not sent twice)
    await _send_at(port, datetime.combine(day3, time(12), BERLIN), "termin@example.org", DAY_ONE[2][1], DAY_ONE[2][2])
    await pipeline.work()
    server.close()

    secret = pipeline.deps.settings.effective_pseudonym_key
    linkless = 0
    replies: dict[str, list[dict[str, str]]] = defaultdict(list)  # "category:channel" -> per reply: link -> token
    with Session(pipeline.deps.engine) as session:
        for reply in pipeline.relay.received:
            tokens = re.findall(r"/r/([A-Za-z0-9_-]+)", reply.message.get_body(("plain",)).get_content())
            if not tokens:
                linkless += 1  # the emergency reply: phone numbers and an address, no link
                continue
            parsed = [read_token(secret, token) for token in tokens]
            assert tokens and all(parsed) and len({p[0] for p in parsed if p}) == 1
            decision = session.get(Decision, parsed[0][0] if parsed[0] else "")
            assert decision is not None
            replies[f"{decision.category}:{decision.channel}"].append(
                {p[1]: token for p, token in zip(parsed, tokens, strict=True) if p}
            )
    assert len(pipeline.relay.received) == len(DAY_ONE) and linkless == 1
    assert {key: len(found) for key, found in replies.items()} == {
        "documents:upload": 2,
        "appointment:appointment": 1,
        "general:overview": 1,
        "change_notice:portal": 1,
    }
    [general] = replies["general:overview"]
    assert {"portal", "upload"} <= set(general)

    # the citizens click on day 3: one documents reply twice, the general reply's portal and upload links, the
    # change notice's portal link; the other documents reply and the appointment reply are never opened
    document = replies["documents:upload"][0]["upload"]
    clicks = [document, document, general["portal"], general["upload"], replies["change_notice:portal"][0]["portal"]]
    monkeypatch.setattr(services.web.clicks, "utcnow", lambda: datetime.combine(day3, time(15), BERLIN))
    for token in clicks:
        assert (await client.get(f"/r/{token}", allow_redirects=False)).status == 302
    await client.app[CLICKS].flush()  # clicks are written in batches, off the request path

    one = await (await client.get(f"/api/v1/summary?from={day1}&to={day1}", headers=AUTH)).json()
    three = await (await client.get(f"/api/v1/summary?from={day3}&to={day3}", headers=AUTH)).json()
    both = await (await client.get(f"/api/v1/summary?from={day1}&to={day3}", headers=AUTH)).json()
    # the out-of-office mail is automated but no report: unanswered, delivered to staff, not held
    assert (one["received"], one["replied"], one["replies_sent"], one["replies_with_link"], one["held"]) == (
        7,
        6,
        6,
        5,
        0,
    )
    assert (one["received_per_day"], one["received_per_working_day"]) == (7.0, 7.0 if day1.weekday() < 5 else None)
    assert one["by_category"]["documents"]["received_per_day"] == 2.0
    assert (one["replies_clicked"], one["click_through"], one["links_opened"], one["clicks"]) == (3, 0.6, 4, 0)
    assert (one["repeat_7d"], one["repeat_rate_7d"], one["repeat_30d"], one["repeat_rate_30d"]) == (
        1,
        0.1667,
        1,
        0.1667,
    )
    assert _cells(one["by_category"]) == {
        "documents": (2, 2, 1, 0.5, 1),
        "appointment": (1, 1, 0, 0.0, 0),
        "general": (1, 1, 1, 1.0, 2),
        "change_notice": (1, 1, 1, 1.0, 1),
        "emergency": (1, 0, 0, None, 0),  # no link to open: no click-through, not 0 %
        "automated": (0, 0, 0, None, 0),
    }
    # per channel the reply steered to; links_opened under the channel clicked (general -> portal and upload)
    assert _cells(one["by_channel"]) == {
        "upload": (2, 2, 1, 0.5, 2),
        "appointment": (1, 1, 0, 0.0, 0),
        "overview": (1, 1, 1, 1.0, 0),
        "portal": (1, 1, 1, 1.0, 2),
        "phone": (1, 0, 0, None, 0),
        "none": (0, 0, 0, None, 0),
    }
    assert (three["received"], three["replied"], three["suppressed"], three["replies_sent"]) == (1, 0, 1, 0)
    assert (three["replies_clicked"], three["click_through"], three["links_opened"], three["clicks"]) == (0, None, 0, 5)
    assert (both["replies_sent"], both["replies_clicked"], both["click_through"], both["clicks"]) == (6, 3, 0.6, 5)

    compared = await (
        await client.get(
            f"/api/v1/compare?before_from={day1}&before_to={day1}&after_from={day3}&after_to={day3}", headers=AUTH
        )
    ).json()
    assert compared["before"]["click_through"] == 0.6 and compared["after"]["click_through"] is None
    assert compared["change"]["received"] == round((1 - 7) / 7, 4) and compared["change"]["click_through"] is None

    table = await (await client.get(f"/api/v1/summary.csv?from={day1}&to={day1}", headers=AUTH)).text()
    rows = {(row["by"], row["key"]): row for row in csv.DictReader(io.StringIO(table))}
    assert rows[("all", "all")]["click_through"] == "0.6" and rows[("all", "all")]["replies_clicked"] == "3"
    assert (rows[("channel", "upload")]["replies_sent"], rows[("channel", "upload")]["click_through"]) == ("2", "0.5")
    assert (rows[("channel", "portal")]["links_opened"], rows[("category", "general")]["click_through"]) == ("2", "1.0")
    assert rows[("channel", "none")]["click_through"] == ""

    metrics = await (await client.get("/metrics")).text()
    for line in (
        'channelshift_replies_clicked_total{category="general",channel="overview"} 1.0',
        'channelshift_replies_clicked_total{category="documents",channel="upload"} 1.0',
        'channelshift_links_opened_total{category="general",channel="portal"} 1.0',
        'channelshift_links_opened_total{category="general",channel="upload"} 1.0',
        'channelshift_replies_total{category="documents",channel="upload",state="sent"} 2.0',
        'channelshift_click_through_ratio{by="all",name="all"} 0.6',
        'channelshift_click_through_ratio{by="channel",name="upload"} 0.5',
        'channelshift_click_through_ratio{by="channel",name="overview"} 1.0',
        'channelshift_click_through_ratio{by="category",name="appointment"} 0.0',
        'channelshift_repeat_rate_ratio{window="7d"} 0.1667',
        'channelshift_replies_total{category="emergency",channel="phone",state="sent"} 1.0',
    ):
        assert line in metrics, line
    assert 'channelshift_replies_clicked_total{category="general",channel="portal"}' not in metrics
    assert 'channelshift_click_through_ratio{by="category",name="emergency"}' not in metrics

    # the page shows the same numbers as the API, from the same function
    period = reports.Period(day1, day1, BERLIN)
    unlinked = unlinked_categories(pipeline.deps.rules.current, pipeline.deps.rules.templates_dir)
    assert unlinked == {"emergency"}
    data = dashboard_data(
        pipeline.deps.engine, View(period, day1), pipeline.deps.rules.current.settings, "de", unlinked
    )
    assert data["summary"]["click_through"] == one["click_through"]
    assert data["summary"]["by_channel"] == one["by_channel"]
    assert [card["after"] for card in data["cards"]][2:] == [0.1667, 0.6]
    assert [card["after_text"] for card in data["cards"]][2:] == ["16,7\u00a0%", "60,0\u00a0%"]
    labels = ["Terminbuchung", "Übersicht aller Wege", "Telefon", "Online-Portal", "Dokumenten-Upload"]
    assert data["charts"]["channels"]["labels"] == labels
    assert data["charts"]["channels"]["datasets"][1]["data"] == [0.0, 100.0, None, 100.0, 50.0]
    page = await (await client.get(f"/dashboard?from={day1}&to={day1}&cutoff={day1}", headers=AUTH)).text()
    assert "60,0\u00a0%" in page and "Allgemeine Frage" in page and "change_notice" not in page
    english = await (await client.get(f"/dashboard?from={day1}&to={day1}&cutoff={day1}&lang=en", headers=AUTH)).text()
    assert "60.0%" in english and "General question" in english


def _cells(groups: dict[str, dict[str, object]]) -> dict[str, tuple[object, ...]]:
    return {
        name: (f["replies_sent"], f["replies_with_link"], f["replies_clicked"], f["click_through"], f["links_opened"])
        for name, f in groups.items()
    }


def test_openapi_and_csv_name_every_figure_the_summary_has() -> None:
    figures = set(reports.figures({})) | set(reports.PER_DAY_FIELDS)
    assert set(OPENAPI["components"]["schemas"]["Figures"]["properties"]) == figures
    assert set(SUMMARY_COLUMNS) <= figures
    extra = {"period", "working_days", "suppressed_by_reason", "rejected_at_smtp", "by_category", "by_channel"}
    assert set(OPENAPI["components"]["schemas"]["Summary"]["properties"]) == figures | extra
