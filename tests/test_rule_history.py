"""Rule-set history: recorded once per version on SQLite and PostgreSQL, changed files, diffs, CLI, API, page."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import Engine, func, text
from sqlmodel import Session, select

from services.cli import main
from services.config import PROJECT_ROOT
from services.ruleset.reload import Fallback, RuleSetHolder, RulesNotLoaded
from services.store.db import make_engine
from services.store.models import RuleSetBlob, RuleSetVersion
from services.store.rulesets import RuleSetStore, diff_against_previous
from services.web.app import create_app
from tests.chromium import chromium_dom
from tests.support import AUTH, SERVED, Pipeline, make_mail

HISTORY_TABLES = ("ruleset_file", "ruleset_version", "ruleset_blob")


def clear_history(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in HISTORY_TABLES:
            connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    clear_history(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def rule_copy(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped rules (with their examples) and templates, in folders a test may edit."""
    rules, templates = tmp_path / "rules", tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "routing_rules", rules, ignore=shutil.ignore_patterns("tests"))
    shutil.copytree(PROJECT_ROOT / "templates", templates)
    return rules, templates


def _holder(rules: Path, templates: Path, engine: Engine, tmp_path: Path) -> RuleSetHolder:
    fallback = Fallback(RuleSetStore(engine), tmp_path / "last-good", "test")
    return RuleSetHolder(rules, templates, tmp_path / "cache", with_model=False, fallback=fallback)


def _blobs(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(RuleSetBlob)).one())


def _edit(path: Path, old: str, new: str) -> None:
    content = path.read_text(encoding="utf-8")
    assert old in content
    path.write_text(content.replace(old, new, 1), encoding="utf-8")


def test_hot_reload_records_a_version_with_its_changed_files_and_diff(
    engine: Engine, rule_copy: tuple[Path, Path], tmp_path: Path
) -> None:
    rules, templates = rule_copy
    store = RuleSetStore(engine)
    holder = _holder(rules, templates, engine, tmp_path)
    [first] = store.versions()
    assert first.version == holder.current.version and first.previous_version is None
    example_files = len(list((rules / "examples").iterdir()))
    assert first.file_count > example_files > 1000  # rules, lists, templates and every example
    assert {c["change"] for c in first.changed} == {"added"} and len(first.changed) == first.file_count
    blobs = _blobs(engine)

    _edit(rules / "90-general.yaml", "Anything else - general questions", "Anything else, general questions")
    _edit(templates / "replies" / "general" / "de.txt.j2", "\n", "\n{# geprüft im Dezember #}\n")
    assert holder.refresh()
    [second, again_first] = store.versions()
    assert again_first == first
    assert second.version == holder.current.version != first.version
    assert second.previous_version == first.version and second.activated_by == "test"
    assert second.changed == [
        {"path": "rules/90-general.yaml", "change": "modified"},
        {"path": "templates/replies/general/de.txt.j2", "change": "modified"},
    ]
    # the 2,000 unchanged examples cost nothing: only the two edited files' contents are new
    assert _blobs(engine) == blobs + 2
    diff = diff_against_previous(store, second)
    assert f"--- {first.version}/rules/90-general.yaml" in diff
    assert f"+++ {second.version}/rules/90-general.yaml" in diff
    assert "-    description: Anything else - general questions" in diff
    assert "+    description: Anything else, general questions" in diff
    assert "+{# geprüft im Dezember #}" in diff
    assert "examples/" not in diff  # mails are listed as changed files, never printed

    # a refused edit is not a version; the running one stays recorded as it was
    (rules / "35-probe.yaml").write_text("rules:\n  - id: [\n", encoding="utf-8")
    assert not holder.refresh() and holder.errors
    assert [v.version for v in store.versions()] == [second.version, first.version]

    # another process (a second holder) activating a recorded version adds nothing
    (rules / "35-probe.yaml").unlink()
    assert not holder.refresh()
    other = _holder(rules, templates, engine, tmp_path)
    assert other.current.version == second.version and len(store.versions()) == 2


def test_an_example_change_is_a_new_version_listed_without_content(
    engine: Engine, rule_copy: tuple[Path, Path], tmp_path: Path
) -> None:
    rules, templates = rule_copy
    store = RuleSetStore(engine)
    holder = _holder(rules, templates, engine, tmp_path)
    example = sorted((rules / "examples").glob("*.eml"))[0]
    example.write_bytes(example.read_bytes() + b"\r\nNoch eine Zeile.\r\n")
    assert holder.refresh()
    newest = store.versions()[0]
    assert newest.changed == [{"path": f"examples/{example.name}", "change": "modified"}]
    assert diff_against_previous(store, newest) == ""


def test_a_process_started_without_any_set_takes_one_recorded_later(
    engine: Engine, rule_copy: tuple[Path, Path], tmp_path: Path
) -> None:
    rules, templates = rule_copy
    broken = tmp_path / "broken"
    shutil.copytree(rules, broken)
    (broken / "35-probe.yaml").write_text("rules:\n  - id: [\n", encoding="utf-8")
    waiting = _holder(broken, templates, engine, tmp_path / "waiting")
    assert not waiting.loaded and waiting.source is None
    assert any("35-probe.yaml:3" in str(e) for e in waiting.errors)
    with pytest.raises(RulesNotLoaded):
        waiting.current  # noqa: B018
    assert not waiting.refresh()

    good = _holder(rules, templates, engine, tmp_path / "good")  # another process, with files that validate
    assert waiting.refresh() and waiting.source == "last-good"
    assert waiting.current.version == good.current.version and waiting.errors  # the files are still broken
    assert waiting.current.is_served(SERVED)


def test_processes_activating_the_same_version_at_once_do_not_fail(engine: Engine) -> None:
    store = RuleSetStore(engine)
    files = {"rules/00-settings.yaml": b"settings: {}\n", "templates/replies/a/de.txt.j2": b"Hallo\n"}
    start = threading.Barrier(6)
    results: list[bool] = []
    failures: list[BaseException] = []

    def activate() -> None:
        start.wait()
        try:
            results.append(store.record("abc123", lambda: files, activated_by="worker"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=activate) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(results) == [False] * 5 + [True]
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(RuleSetVersion)).one() == 1
    assert len(store.file_list("abc123")) == 2 and _blobs(engine) == 2


def test_last_good_for_a_worker_is_a_set_a_model_training_process_loaded(engine: Engine) -> None:
    store = RuleSetStore(engine)
    store.record("aaa", lambda: {"rules/a.yaml": b"a"}, activated_by="worker", model_checked=True)
    store.record("bbb", lambda: {"rules/a.yaml": b"b"}, activated_by="gateway", model_checked=False)
    assert store.latest_good(model_checked=False).version == "bbb"  # type: ignore[union-attr]
    assert store.latest_good(model_checked=True).version == "aaa"  # type: ignore[union-attr]
    assert not store.record("bbb", lambda: None, activated_by="worker", model_checked=True)
    assert store.latest_good(model_checked=True).version == "bbb"  # type: ignore[union-attr]


def test_cli_lists_the_history_and_shows_a_diff(
    engine: Engine, database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHANNELSHIFT_DATABASE_URL", database_url)
    assert main(["rules", "history"]) == 0
    assert "no rule set recorded yet" in capsys.readouterr().out
    store = RuleSetStore(engine)
    store.record("1111", lambda: {"rules/a.yaml": b"x: 1\n", "examples/m.eml": b"Hallo"}, activated_by="serve")
    store.record(
        "2222",
        lambda: {"rules/a.yaml": b"x: 2\n", "examples/m.eml": b"Hallo!"},
        activated_by="worker",
        warnings=["documents: no ar.txt.j2"],
    )
    assert main(["rules", "history"]) == 0
    out = capsys.readouterr().out
    assert out.index("2222") < out.index("1111")  # newest first
    assert "by worker, 1 warning(s)" in out
    assert "changed: rules/a.yaml (modified), 1 example file(s)" in out
    assert main(["rules", "history", "--diff", "2222"]) == 0
    out = capsys.readouterr().out
    assert "--- 1111/rules/a.yaml\n+++ 2222/rules/a.yaml\n" in out and "-x: 1\n+x: 2\n" in out
    assert "Hallo" not in out
    assert main(["rules", "history", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in listed] == ["2222", "1111"] and listed[0]["previous_version"] == "1111"
    assert main(["rules", "history", "--diff", "9999"]) == 1


async def test_api_and_history_page(pipeline: Pipeline, client: TestClient[object, object]) -> None:
    clear_history(pipeline.deps.engine)
    store = RuleSetStore(pipeline.deps.engine)
    store.record("a1", lambda: {"rules/a.yaml": b"rules: []\n"}, activated_by="serve")
    store.record("b2", lambda: {"rules/a.yaml": b"rules: [x]\n", "rules/b.yaml": b"<b>\n"}, activated_by="gateway")

    assert (await client.get("/api/v1/rulesets")).status == 401
    listed = await (await client.get("/api/v1/rulesets", headers=AUTH)).json()
    assert [v["version"] for v in listed["versions"]] == ["b2", "a1"]
    assert listed["versions"][0]["changed"] == [
        {"path": "rules/a.yaml", "change": "modified"},
        {"path": "rules/b.yaml", "change": "added"},
    ]
    detail = await (await client.get("/api/v1/rulesets/b2", headers=AUTH)).json()
    assert detail["previous_version"] == "a1" and [f["path"] for f in detail["files"]] == [
        "rules/a.yaml",
        "rules/b.yaml",
    ]
    assert "-rules: []\n+rules: [x]\n" in detail["diff"] and "--- /dev/null\n+++ b2/rules/b.yaml" in detail["diff"]
    assert (await client.get("/api/v1/rulesets/ffff", headers=AUTH)).status == 404
    assert (await client.get("/api/v1/rulesets/not-hex", headers=AUTH)).status == 400

    refused = await client.get("/workbench/history", allow_redirects=False)
    assert refused.status == 303 and refused.headers["Location"] == "/dashboard/login"
    page = await client.get("/workbench/history?version=b2", headers=AUTH)
    html = await page.text()
    assert page.status == 200
    nonce = re.search(r"'nonce-([^']+)'", page.headers["Content-Security-Policy"])
    assert nonce and f'<style nonce="{nonce.group(1)}">' in html
    assert 'data-version="a1"' in html and 'data-version="b2"' in html
    assert '<span class="add">+&lt;b&gt;</span>' in html  # diff lines escaped
    assert "rules/b.yaml – neu" in html
    assert (await client.get("/workbench/history?version=ffff", headers=AUTH)).status == 404

    dashboard = await (await client.get("/dashboard", headers=AUTH)).text()
    found = re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', dashboard, re.S)
    assert found
    charts = json.loads(found.group(1))["charts"]
    days = len(charts["daily"]["labels"])
    assert charts["daily"]["markers"] == [{"index": days - 1, "versions": ["a1", "b2"]}]
    assert charts["outcomes"]["markers"] == charts["daily"]["markers"]


async def test_activation_markers_drawn_in_chromium(pipeline: Pipeline, tmp_path: Path) -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    clear_history(pipeline.deps.engine)
    answers = await pipeline.send(make_mail(subject="Kontoauszüge", body="Anbei meine Kontoauszüge."))
    assert answers == {}
    await pipeline.work()
    RuleSetStore(pipeline.deps.engine).record("c0ffee", lambda: {"rules/a.yaml": b"x"}, activated_by="serve")
    # headless Chromium cannot send a bearer header
    settings = pipeline.settings_with(admin_token=None)
    app = create_app(settings, pipeline.deps.engine, pipeline.pool, pipeline.deps.rules)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        shot = tmp_path / "markers.png"
        dom = await chromium_dom(f"http://127.0.0.1:{port}/dashboard", tmp_path / "profile", 1280, 2000, shot)
    finally:
        await runner.cleanup()
    drawn = re.search(r'data-charts-drawn="(\d+)"', dom)
    assert drawn and drawn.group(1) == "5"  # the marker plugin breaks no chart
    assert 'data-ruleset-markers="1"' in dom
    assert '<a href="/workbench/history">Versionen und Änderungen</a>' in dom
    assert shot.stat().st_size > 10_000
