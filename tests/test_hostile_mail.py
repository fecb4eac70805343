"""Hostile HTML bodies parse in bounded time, and ordinary HTML keeps its text and its quote marks."""

from __future__ import annotations

import time

import pytest

from services.mail import MAX_HTML_CHARS, html_to_text, parse_mail

# html.parser needed 21 s for 200 KB of `<a` and 100 s for `<p x='`; the ceiling only catches a return of
# super-linear behaviour on a loaded machine (bench/ measures speed)
CEILING_SECONDS = 5.0
SHAPES = ["<a", "<p x='", "<div><b>", "<div>", "<td><table>", "<!--", "\n" + " " * 4000]


@pytest.mark.parametrize("shape", SHAPES, ids=["open-a", "open-attr", "div-b", "div", "td-table", "comment", "blanks"])
def test_malformed_html_of_200_kb_is_bounded(shape: str) -> None:
    html = shape * (200_000 // len(shape))
    started = time.process_time()
    html_to_text(html)
    assert time.process_time() - started < CEILING_SECONDS


def test_html_text_keeps_blocks_entities_and_quotes() -> None:
    html = (
        "<html><head><title>t</title><style>p{}</style></head><body>"
        "<p>Guten Tag,<br>ich habe eine Frage &amp; eine Bitte.</p><div>Zweiter Absatz</div>"
        "<script>alert(1)</script>"
        '<div class="gmail_quote">Am Montag schrieb das Jobcenter:<blockquote>Ihr Bescheid</blockquote></div>'
        "</body></html>"
    )
    text = html_to_text(html)
    assert text.splitlines()[:3] == ["Guten Tag,", "ich habe eine Frage & eine Bitte.", ""]
    assert "Zweiter Absatz" in text and "alert" not in text and "p{}" not in text and "t\n" not in text
    quoted = [line for line in text.splitlines() if "Jobcenter" in line or "Bescheid" in line]
    assert quoted and all(line.startswith("> ") for line in quoted)


def test_oversized_html_is_cut_and_flagged() -> None:
    body = "<p>" + "Wort " * (MAX_HTML_CHARS // 5 + 1000) + "</p>"
    raw = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body.encode()
    )
    mail = parse_mail(raw)
    assert "limit:html" in mail.defects and mail.body_text.startswith("Wort Wort")
