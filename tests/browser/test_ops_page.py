"""The ops dashboard in a real Chromium: refused without a token, signs in with the ops
token, shows the at-risk order the test created, links to its timeline.

Screenshots go to the test's tmp folder; with WAYBILL_UPDATE_SCREENSHOT=1 the dashboard's is
also copied to docs/ops-dashboard.png.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from playwright.async_api import Error as PlaywrightError

from shared import topics
from shared.clock import ManualClock
from tests.browser.test_warehouse_page import DESKTOP, browser  # noqa: F401 (fixture)
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.integration.test_reservation import setup_stock
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.browser]

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "ops-dashboard.png"


async def test_ops_sees_the_at_risk_order_on_the_dashboard(
    make_system: MakeSystem,
    event_log_factory,
    publisher_factory,
    browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    clock = ManualClock(datetime(2026, 11, 25, 7, 0, tzinfo=UTC))
    system = await make_system(
        clock=clock, service_overrides={"sla_check_seconds": 0.05, "broker_check_seconds": 0.5}
    )
    log = await event_log_factory(
        system.config.kafka, [topics.ORDERS_ACCEPTED, topics.SHIPMENTS_LABEL_CREATED]
    )
    shop = await publisher_factory(system.config.kafka)
    # one order goes all the way to a label, so that the carriers have a circuit to show
    await setup_stock(system, [("BER-1", "DE", "10115")], [("BER-1", "OPS-1", 5)])
    labelled = order_placed(lines=[("OPS-1", 1)], placed_at=clock.now())
    await shop.send(topics.ORDERS_PLACED, labelled, key=labelled["order_id"])
    await log.wait(topics.SHIPMENTS_LABEL_CREATED, order_id=labelled["order_id"])
    accepted = []
    for minutes_late in (0, 0, 0, 3):
        order = order_placed(placed_at=clock.now() - timedelta(minutes=minutes_late))
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
        accepted.append((await log.wait(topics.ORDERS_ACCEPTED, order_id=order["order_id"]))[0])
        clock.advance(timedelta(minutes=20))
    waiting, shipped, *_ = accepted
    await shop.send(
        topics.SHIPMENTS_SHIPPED,
        {
            "event_id": str(uuid4()),
            "order_id": shipped["order_id"],
            "shipment_id": str(uuid4()),
            "carrier": "swiftpost",
            "tracking_number": "SP1",
            "shipped_at": (clock.now() - timedelta(minutes=5)).isoformat(),
        },
        key=shipped["order_id"],
    )
    start = datetime.fromisoformat(waiting["placed_at"])
    deadline = datetime.fromisoformat(waiting["promised"]["dispatch_by"])
    clock.set(start + (deadline - start) * 0.9)

    url = system.urls["orders"]
    page = await browser.new_page(**DESKTOP)
    response = await page.goto(f"{url}/ops")
    assert response is not None and response.status == 401
    assert await page.locator("input[name=token]").count() == 1

    await page.fill("input[name=token]", system.config.tokens["shop"])
    await page.click("button[type=submit]")
    assert "Not an ops token" in await page.content()

    await page.fill("input[name=token]", system.config.tokens["ops"])
    await page.click("button[type=submit]")
    assert page.url == f"{url}/ops"  # the token went into a cookie, not the address

    async def shows_at_risk() -> bool:
        try:
            await page.reload()
        except PlaywrightError:  # the page's own refresh (every 15 s) navigated meanwhile
            return False
        item = page.locator(".attention li", has_text=waiting["order_id"])
        return await item.count() > 0 and "at risk" in await item.first.inner_text()

    await wait_for(shows_at_risk, what="the at-risk order on the dashboard")
    figures = await page.locator("table.figures").first.inner_text()
    assert "accept" in figures and "dispatch" in figures
    assert await page.locator("svg.chart polyline").count() >= 1
    assert "breached" in await page.locator(".attention").inner_text()  # the late one

    async def plumbing_shown() -> bool:
        await page.reload()
        rows = page.locator("table.services tbody tr")
        texts = [await rows.nth(i).inner_text() for i in range(await rows.count())]
        carriers = await page.locator("table.carriers tbody").inner_text()
        return (
            len(texts) == 4
            and not any("unreachable" in t for t in texts)
            and "shipping" in carriers
            and "closed" in carriers
        )

    await wait_for(plumbing_shown, what="every service's plumbing and the carriers' circuits")
    await page.screenshot(path=str(tmp_path / "ops.png"), full_page=True)
    if os.environ.get("WAYBILL_UPDATE_SCREENSHOT") == "1":
        shutil.copy(tmp_path / "ops.png", DOCS_SCREENSHOT)

    await page.click(f"text={waiting['order_id']}")
    assert f"/ops/orders/{waiting['order_id']}" in page.url.replace("%3A", ":")
    timeline = await page.content()
    assert "at risk" in timeline and "accepted" in timeline

    other = await browser.new_page(**DESKTOP)  # a fresh context: no cookie
    refused = await other.goto(f"{url}/ops/orders/{waiting['order_id']}")
    assert refused is not None and refused.status == 401
