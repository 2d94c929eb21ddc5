"""The warehouse page in a real Chromium against the real system.

Debian's Chromium (/usr/bin/chromium; `make test` installs it when run as root) is
driven by Playwright; no browser is ever downloaded. Without it the test fails
with the reason. Screenshots go to the test's tmp folder; with
WAYBILL_UPDATE_SCREENSHOT=1 the desktop one is also copied to docs/warehouse-page.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import playwright.async_api as playwright_api
import pytest

from shared import topics
from tests.conftest import MakeSystem
from tests.factories import order_placed
from tests.support import bearer

pytestmark = [pytest.mark.integration, pytest.mark.browser]


CHROMIUM = Path(os.environ.get("WAYBILL_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 900}}
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "warehouse-page.png"


def _chromium_missing() -> bool:
    return not CHROMIUM.exists()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if _chromium_missing():
        pytest.fail(
            f"Debian's Chromium is not at {CHROMIUM}: `make test` installs it when run as "
            "root (apt-get install chromium); set WAYBILL_TEST_CHROMIUM to use another"
        )
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def test_staff_sign_in_scan_pick_and_pack_in_the_browser(
    make_system: MakeSystem, event_log_factory, publisher_factory, browser, tmp_path: Path
) -> None:
    system = await make_system(
        autopick=False,
        services=["orders", "inventory"],
        with_sandbox=False,
        service_overrides={"wave_max_orders": 2, "wave_max_age_seconds": 3600},
    )
    tokens = system.config.tokens
    base = system.urls["inventory"]
    log = await event_log_factory(
        system.config.kafka, [topics.PICKLISTS_CREATED, topics.ORDERS_PACKED]
    )
    shop = await publisher_factory(system.config.kafka)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(
            f"{base}/warehouses/BER-1",
            json={"name": "Berlin Mitte", "country": "DE", "postal_code": "10115"},
            headers=bearer(tokens["admin"]),
        )
        assert r.status_code == 200, r.text
        for sku, bin in (("SKU-RED", "A-03-2"), ("SKU-BLUE", "A-01-1"), ("MUG-GREEN", "B-02-1")):
            r = await http.post(
                f"{base}/stock/receipts",
                json={"warehouse_id": "BER-1", "sku": sku, "quantity": 20, "bin": bin},
                headers=bearer(tokens["warehouse"]),
            )
            assert r.status_code == 202, r.text
    # each test system has its own database: readable order ids cannot collide
    first = order_placed(order_id="shop1:10041", lines=[("SKU-RED", 2), ("SKU-BLUE", 1)])
    second = order_placed(order_id="shop1:10042", lines=[("MUG-GREEN", 3), ("SKU-RED", 1)])
    for order in (first, second):
        await shop.send(topics.ORDERS_PLACED, order, key=order["order_id"])
    created = (await log.wait(topics.PICKLISTS_CREATED))[0]
    assert len(created["lines"]) == 4

    page_url = f"{base}/warehouse/BER-1"
    phone = await browser.new_context(**PHONE)
    page = await phone.new_page()
    page.set_default_timeout(15_000)

    # no token: the sign-in page, not a stack trace
    response = await page.goto(page_url)
    assert response is not None and response.status == 401
    await playwright_api.expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await playwright_api.expect(page.get_by_label("Warehouse token")).to_be_visible()
    assert "Traceback" not in await page.content()

    # another role's token: refused
    response = await page.goto(f"{page_url}?token={tokens['shop']}")
    assert response is not None and response.status == 403
    await playwright_api.expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()

    # the warehouse token: a cookie, and back to the clean URL
    response = await page.goto(f"{page_url}?token={tokens['warehouse']}")
    assert response is not None and response.status == 200
    assert page.url == page_url
    [cookie] = [c for c in await phone.cookies() if c["name"] == "waybill_warehouse"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    lines = page.locator("li.line")
    await playwright_api.expect(lines).to_have_count(4)
    bins = [b.strip() for b in await page.locator("li.line .bin").all_inner_texts()]
    assert bins == ["A-01-1", "A-03-2", "A-03-2", "B-02-1"]  # walking order
    await _save(page, tmp_path / "phone-open.png")

    desktop = await browser.new_context(**DESKTOP)
    wide = await desktop.new_page()
    await wide.goto(f"{page_url}?token={tokens['warehouse']}")
    await playwright_api.expect(wide.locator("li.line")).to_have_count(4)
    await _save(wide, tmp_path / "desktop-open.png")

    # the printable pick list
    print_url = await page.get_by_role("link", name="Print").get_attribute("href")
    await wide.goto(f"{base}{print_url}")
    await playwright_api.expect(wide.locator("table.sheet tbody tr")).to_have_count(4)
    await wide.emulate_media(media="print")
    await playwright_api.expect(wide.get_by_role("link", name="Back to pick lists")).to_be_hidden()
    await _save(wide, tmp_path / "desktop-print.png")
    await wide.emulate_media(media="screen")

    # a wrong scan: refused, with a visible message, and the same line keeps the focus
    assert await _focused(page, "name") == "scanned_sku"
    line_before = await _focused_line(page)
    await page.keyboard.type("SKU-WRONG")
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    await playwright_api.expect(alert).to_be_visible()
    await playwright_api.expect(alert).to_contain_text("wrong SKU", ignore_case=True)
    await playwright_api.expect(alert).to_contain_text("SKU-WRONG")
    assert await _focused_line(page) == line_before
    await _save(page, tmp_path / "phone-wrong-sku.png")

    # pick every line by keyboard alone: type what the line asks for, Enter
    for picked in range(1, 5):
        assert await _focused(page, "name") == "scanned_sku"
        sku = (await page.locator("li.line:has(input:focus) .sku").inner_text()).strip()
        await page.keyboard.type(sku)
        async with page.expect_navigation():
            await page.keyboard.press("Enter")
        await playwright_api.expect(page.get_by_role("status")).to_contain_text("picked")
        if picked == 2:
            # the first order is picked in full (lines 1 and 2): its pack form shows
            await wide.goto(page_url)
            await playwright_api.expect(wide.locator("form.pack")).to_have_count(1)
            await _save(wide, tmp_path / "desktop-picking.png")
            await desktop.close()
    await playwright_api.expect(page.locator("li.line-picked")).to_have_count(4)
    await playwright_api.expect(page.locator("form.pack")).to_have_count(2)
    assert await _focused(page, "name") == "weight_grams"
    await _save(page, tmp_path / "phone-ready-to-pack.png")

    # the first order in two parcels: "Add a parcel" works without JavaScript
    pack = page.locator(f"form.pack:has(input[value='{first['order_id']}'])")
    await pack.locator("input[name=weight_grams]").fill("900")
    await pack.get_by_role("button", name="Add a parcel").click()
    await page.wait_for_load_state()
    pack = page.locator(f"form.pack:has(input[value='{first['order_id']}'])")
    await playwright_api.expect(pack.locator("fieldset.parcel")).to_have_count(2)
    await playwright_api.expect(pack.locator("input[name=weight_grams]").first).to_have_value("900")
    for index, values in enumerate(((900, 300, 200, 100), (400, 200, 150, 80))):
        for name, value in zip(
            ("weight_grams", "length_mm", "width_mm", "height_mm"), values, strict=True
        ):
            await pack.locator(f"input[name={name}]").nth(index).fill(str(value))
    async with page.expect_navigation():
        await pack.get_by_role("button", name="Packed").click()
    await playwright_api.expect(page.get_by_role("status")).to_contain_text("packed in 2 parcels")

    # the second by keyboard: Enter in the last field submits it
    pack = page.locator(f"form.pack:has(input[value='{second['order_id']}'])")
    for name, value in (("weight_grams", 1500), ("length_mm", 400), ("width_mm", 300)):
        await pack.locator(f"input[name={name}]").fill(str(value))
    await pack.locator("input[name=height_mm]").fill("200")
    async with page.expect_navigation():
        await pack.locator("input[name=height_mm]").press("Enter")
    await playwright_api.expect(page.get_by_role("status")).to_contain_text("packed in 1 parcel")
    await playwright_api.expect(page.get_by_text("No open pick lists")).to_be_visible()

    packed = {
        order["order_id"]: (await log.wait(topics.ORDERS_PACKED, order_id=order["order_id"]))[0]
        for order in (first, second)
    }
    assert [p["weight_grams"] for p in packed[first["order_id"]]["parcels"]] == [900, 400]
    assert packed[first["order_id"]]["lines"] == [
        {"sku": "SKU-BLUE", "quantity": 1},
        {"sku": "SKU-RED", "quantity": 2},
    ]
    assert packed[second["order_id"]]["parcels"] == [
        {"weight_grams": 1500, "length_mm": 400, "width_mm": 300, "height_mm": 200}
    ]

    # signing out drops the cookie
    async with page.expect_navigation():
        await page.get_by_role("button", name="Sign out").click()
    await playwright_api.expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await phone.close()

    if os.environ.get("WAYBILL_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(tmp_path / "desktop-picking.png", DOCS_SCREENSHOT)


async def _save(page: Any, path: Path) -> None:
    await page.screenshot(path=str(path), full_page=True)


async def _focused(page: Any, attribute: str) -> str | None:
    value: str | None = await page.evaluate(
        "(name) => document.activeElement && document.activeElement.getAttribute(name)",
        attribute,
    )
    return value


async def _focused_line(page: Any) -> str | None:
    value: str | None = await page.evaluate(
        "() => document.activeElement && document.activeElement.closest('li.line')?.id"
    )
    return value
