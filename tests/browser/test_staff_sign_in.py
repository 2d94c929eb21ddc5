"""A staff member signs in to their warehouse's page with their own key, in a real Chromium,
and is refused another warehouse's page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import playwright.async_api as playwright_api
import pytest

from tests.browser.test_warehouse_page import DESKTOP, browser  # noqa: F401 (a fixture)
from tests.conftest import MakeSystem
from tests.support import bearer

pytestmark = [pytest.mark.integration, pytest.mark.browser]


async def test_a_staff_member_signs_in_to_their_warehouse_and_is_refused_another(
    make_system: MakeSystem,
    browser: Any,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    system = await make_system(autopick=False, services=["orders", "inventory"], with_sandbox=False)
    base, admin = system.urls["inventory"], system.config.tokens["admin"]
    async with httpx.AsyncClient(timeout=30) as http:
        for wid, name in (("BER-1", "Berlin Mitte"), ("HAM-1", "Hamburg Hafen")):
            r = await http.put(
                f"{base}/warehouses/{wid}",
                json={"name": name, "country": "DE", "postal_code": "10115"},
                headers=bearer(admin),
            )
            assert r.status_code == 200, r.text
        r = await http.post(
            f"{base}/warehouses/BER-1/staff",
            json={"name": "Ada Lovelace", "staff_id": "ada"},
            headers=bearer(admin),
        )
        assert r.status_code == 201, r.text
        key = r.json()["key"]

    context = await browser.new_context(**DESKTOP)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    response = await page.goto(f"{base}/warehouse/BER-1")
    assert response is not None and response.status == 401
    await page.get_by_label("Your staff key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await playwright_api.expect(page.get_by_role("heading", name="Berlin Mitte")).to_be_visible()
    await playwright_api.expect(page.locator("#signed-in-as")).to_have_text(
        "Signed in as Ada Lovelace (ada)"
    )
    assert page.url == f"{base}/warehouse/BER-1"  # the key went into a cookie, not the URL
    assert key not in await page.content()
    await page.screenshot(path=str(tmp_path / "staff-signed-in.png"), full_page=True)

    # the same browser, signed in, on another warehouse's page
    response = await page.goto(f"{base}/warehouse/HAM-1")
    assert response is not None and response.status == 403
    await playwright_api.expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    await playwright_api.expect(page.get_by_text("is for BER-1, not for HAM-1")).to_be_visible()
    assert "Hamburg Hafen" not in await page.content()
    await page.screenshot(path=str(tmp_path / "staff-refused.png"), full_page=True)
    await context.close()
