"""Headless Chromium driven over the DevTools protocol: navigate, run a script, read the page, collect CSP violations."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

# every document records the Content-Security-Policy violations it sees (DevTools scripts are exempt from CSP)
RECORD_VIOLATIONS = (
    "window.__csp = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__csp.push(e.effectiveDirective + ' ' + (e.blockedURI || 'inline')));"
)


# what every headless run here uses: no GPU, no sandbox (root in CI), nothing that reaches the network
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_or_skip() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    return found


class Page:
    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.socket.send_json({"id": number, "method": method, "params": params})
        while True:
            message = json.loads((await self.socket.receive(timeout=60)).data)
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Until the expression is truthy in the page (a browser loads and draws at its own pace)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with contextlib.suppress(AssertionError):  # the page is between documents
                value = await self.evaluate(expression)
                if value:
                    return value
            if loop.time() > deadline:
                raise AssertionError(f"page never satisfied {expression!r}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def chromium_page(profile: Path, width: int = 1280, height: int = 1400) -> AsyncIterator[Page]:
    """One tab of a fresh headless Chromium with its own profile; violations recorded on every document."""
    binary = chromium_or_skip()
    profile.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        binary,
        *HEADLESS_FLAGS,
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(600):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            [target] = [t for t in targets if t["type"] == "page"]
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                page = Page(socket)
                await page.call("Page.enable")
                await page.call("Page.addScriptToEvaluateOnNewDocument", source=RECORD_VIOLATIONS)
                yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def chromium_dom(url: str, profile: Path, width: int, height: int, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot if asked), from one headless run per call."""
    chromium = chromium_or_skip()
    flags = [
        *HEADLESS_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=10000",
    ]
    if screenshot is not None:
        process = await asyncio.create_subprocess_exec(
            chromium,
            *flags,
            f"--screenshot={screenshot}",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(process.wait(), timeout=120)
    process = await asyncio.create_subprocess_exec(
        chromium, *flags, "--dump-dom", url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return out.decode()
