"""`channelshift demo-traffic`: a synthetic citizen mail stream through the real gateway, declining after a cut-off."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import aiosmtplib

SERVED = [
    "info@jobcenter-musterstadt.example",
    "leistung@jobcenter-musterstadt.example",
    "team-412@jobcenter-musterstadt.example",
]
# (category, weight, subject, body) - obviously synthetic texts in the six languages citizens write in
SAMPLES: list[tuple[str, int, str, str]] = [
    ("documents", 22, "Unterlagen", "Guten Tag, anbei meine Kontoauszüge wie angefordert."),
    ("documents", 6, "Documents", "Hello, please find attached my payslip for last month."),
    ("documents", 3, "Документи", "Добрий день! Надсилаю виписку з рахунку, документ у вкладенні."),
    ("change_notice", 12, "Neue Adresse", "Hallo, ich bin umgezogen, meine neue Adresse lautet Beispielweg 1."),
    ("change_notice", 3, "Yeni iş", "Merhaba, yeni iş buldum, işe başladım."),
    (
        "continued_benefits",
        9,
        "Weiterbewilligung",
        "Mein Bewilligungszeitraum endet bald, bitte um den Weiterbewilligungsantrag.",
    ),
    ("first_application", 6, "Bürgergeld beantragen", "Ich möchte Bürgergeld beantragen. Wie geht das?"),
    ("first_application", 2, "طلب", "مرحباً، نريد أن نقدم طلب Bürgergeld لأول مرة."),
    ("appointment", 10, "Termin verschieben", "Kann ich meinen Termin am Donnerstag verschieben?"),
    ("appointment", 2, "Встреча", "Здравствуйте, прошу перенести встречу на другой день."),
    ("sick_note", 7, "Krankmeldung", "Ich bin krankgeschrieben bis Freitag."),
    ("objection", 4, "Widerspruch", "Hiermit lege ich Widerspruch gegen den Bescheid ein."),
    ("payment_status", 8, "Geld nicht angekommen", "Mein Geld ist diesen Monat nicht angekommen."),
    ("emergency", 1, "Dringend", "Ich habe nichts mehr zu essen für meine Kinder."),
    ("complaint", 2, "Beschwerde", "Ich möchte mich über die lange Wartezeit beschweren."),
    ("general", 6, "Frage", "Wann haben Sie geöffnet?"),
]
PARTNER = ("partner", "Teilnahmebescheinigung", "Anbei die Teilnahmebescheinigung.", "kurs@bildungswerk-nord.example")
AUTOMATED = ("automated", "Automatische Antwort: Ihre Nachricht", "Ich bin nicht im Büro.", "abwesend@firma.example")


@dataclass(frozen=True)
class DemoPlan:
    days: int
    per_day: int
    cutoff_day: int
    seed: int = 7

    def volume(self, day_index: int, day: date) -> int:
        """Mails on one day: steady before the cut-off, falling to under half of it afterwards."""
        base = float(self.per_day)
        if day_index >= self.cutoff_day:
            progress = (day_index - self.cutoff_day) / max(1, self.days - self.cutoff_day)
            base *= 0.6 - 0.2 * progress
        if day.weekday() >= 5:
            base *= 0.3
        return max(0, round(base))


def build_day(
    plan: DemoPlan,
    rng: random.Random,
    day: date,
    count: int,
    senders: list[str],
    after: bool,
    groups: dict[str, tuple[str, datetime]] | None = None,
) -> list[tuple[datetime, str, str, bytes]]:
    """One day's mails; `groups` learns each mail's Message-ID -> (category and side of the cut-off, time)."""
    mails = []
    weights = [weight for _c, weight, _s, _b in SAMPLES]
    repeat_share = 0.12 if after else 0.3
    for _ in range(count):
        moment = datetime.combine(day, time(rng.randint(6, 20), rng.randint(0, 59)), UTC)
        roll = rng.random()
        if roll < 0.04:
            category, subject, body, sender = PARTNER
        elif roll < 0.08:
            category, subject, body, sender = AUTOMATED
        else:
            category, _w, subject, body = rng.choices(SAMPLES, weights)[0]
            if senders and rng.random() < repeat_share:
                sender = rng.choice(senders[-400:])
            else:
                sender = f"demo{rng.randint(1, 10**6)}@example.org"
                senders.append(sender)
        recipient = rng.choice(SERVED)
        message = EmailMessage()
        message["From"] = sender
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = format_datetime(moment)
        message_id = f"<demo.{rng.getrandbits(64):x}@example.org>"
        message["Message-ID"] = message_id
        if groups is not None:
            groups[message_id] = (f"{category}:{'after' if after else 'before'}", moment)
        message["X-Channelshift-Demo-Received"] = moment.isoformat()
        if roll >= 0.04 and roll < 0.08:
            message["Auto-Submitted"] = "auto-replied"
        message.set_content(body + "\n")
        if subject in ("Unterlagen", "Documents", "Документи"):
            message.add_attachment(b"%PDF-1.4 demo", maintype="application", subtype="pdf", filename="nachweis.pdf")
        mails.append((moment, sender, recipient, message.as_bytes(policy=SMTP_POLICY)))
    return sorted(mails)


async def _send_all(
    mails: list[tuple[datetime, str, str, bytes]], host: str, port: int, concurrency: int
) -> Counter[str]:
    results: Counter[str] = Counter()
    queue: asyncio.Queue[tuple[datetime, str, str, bytes]] = asyncio.Queue()
    for mail in mails:
        queue.put_nowait(mail)

    async def sender_task() -> None:
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=60, start_tls=False)
        await client.connect()
        try:
            while not queue.empty():
                _moment, sender, recipient, data = queue.get_nowait()
                try:
                    await client.sendmail(sender, [recipient], data)
                    results["accepted"] += 1
                except aiosmtplib.SMTPException:
                    results["refused"] += 1
        finally:
            await client.quit()

    await asyncio.gather(*(sender_task() for _ in range(concurrency)))
    return results


def _spread(count: int, share: float) -> list[bool]:
    """Which of `count` items to pick so that every leading run of n holds round(n * share) picks."""
    return [int((index + 1) * share + 0.5) > int(index * share + 0.5) for index in range(count)]


async def _click_some(
    outbox: Path, share: float, groups: dict[str, tuple[str, datetime]], wait_seconds: float
) -> tuple[int, int]:
    """Open `share` of the /r/ links in replies that reached the maildir outbox, like citizens would.

    Spread evenly per category and side of the cut-off, in the order the mails arrived, so that every
    click-through the dashboard shows (per category, channel, period or week) lies close to `share`.
    Returns (replies with a link, links opened).
    """
    previous, stable_since = -1, asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - stable_since < 3 and wait_seconds > 0:
        count = len(list((outbox / "new").glob("*"))) if (outbox / "new").is_dir() else 0
        if count != previous:
            previous, stable_since = count, asyncio.get_running_loop().time()
        await asyncio.sleep(0.5)
        wait_seconds -= 0.5
    by_group: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for path in sorted((outbox / "new").glob("*")) if (outbox / "new").is_dir() else []:
        data = path.read_bytes()
        found = re.search(rb"https?://[^\s\"<>]+/r/[A-Za-z0-9_=-]+", data.replace(b"=\r\n", b""))
        if not found:
            continue
        original = str(BytesHeaderParser().parsebytes(data).get("In-Reply-To", "")).strip()
        group, moment = groups.get(original, ("other", datetime.min.replace(tzinfo=UTC)))
        by_group[group].append((moment, found.group(0).decode()))
    links = []
    for replies in by_group.values():
        replies.sort()
        links += [link for (_moment, link), pick in zip(replies, _spread(len(replies), share), strict=True) if pick]
    async with aiohttp.ClientSession() as session:
        for link in links:
            async with session.get(link, allow_redirects=False) as response:
                await response.read()
    return sum(len(replies) for replies in by_group.values()), len(links)


def run_demo(
    *,
    host: str,
    port: int,
    days: int,
    per_day: int,
    cutoff_day: int | None,
    concurrency: int,
    click_share: float,
    outbox: Path | None,
    today: date | None = None,
    seed: int = 7,
    cutover: date | None = None,
) -> dict[str, object]:
    """Send the stream; the cut-off is `cutoff_day`, else the rule set's `cutover` if within the days, else mid-way."""
    first_day = (today or datetime.now(UTC).date()) - timedelta(days=days - 1)
    if cutoff_day is None and cutover is not None and 0 < (cutover - first_day).days < days:
        cutoff_day = (cutover - first_day).days
    plan = DemoPlan(
        days=days, per_day=per_day, cutoff_day=cutoff_day if cutoff_day is not None else days // 2, seed=seed
    )
    rng = random.Random(seed)
    senders: list[str] = []
    groups: dict[str, tuple[str, datetime]] = {}
    mails: list[tuple[datetime, str, str, bytes]] = []
    per_day_counts = {}
    for index in range(days):
        day = first_day + timedelta(days=index)
        count = plan.volume(index, day)
        per_day_counts[day.isoformat()] = count
        mails.extend(build_day(plan, rng, day, count, senders, after=index >= plan.cutoff_day, groups=groups))
    results = asyncio.run(_send_all(mails, host, port, concurrency))
    replies, clicks = 0, 0
    if outbox is not None and click_share > 0:
        replies, clicks = asyncio.run(_click_some(outbox, click_share, groups, wait_seconds=900))
    cutoff = first_day + timedelta(days=plan.cutoff_day)
    before = [n for d, n in per_day_counts.items() if d < cutoff.isoformat()]
    after = [n for d, n in per_day_counts.items() if d >= cutoff.isoformat()]
    return {
        "sent": len(mails),
        "accepted": results["accepted"],
        "refused": results["refused"],
        "clicks": clicks,
        "replies_with_link": replies,
        "opened_share": round(clicks / replies, 4) if replies else None,
        "first_day": first_day.isoformat(),
        "cutoff": cutoff.isoformat(),
        "per_day_before": round(sum(before) / max(1, len(before)), 1),
        "per_day_after": round(sum(after) / max(1, len(after)), 1),
        "per_day": per_day_counts,
    }
