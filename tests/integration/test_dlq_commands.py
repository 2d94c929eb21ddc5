"""`waybill dlq list` and `waybill dlq replay` against a real system."""

from __future__ import annotations

import json
from uuid import uuid4

import httpx
import pytest

from shared import topics
from shared.topics import dead_letter_topic
from tests.conftest import MakeSystem
from tests.support import bearer, wait_for
from waybill.dlq import list_dead_letters, read_dead_letters, replay_dead_letters

pytestmark = pytest.mark.integration


async def test_a_dead_lettered_receipt_is_listed_and_replayed_once_its_cause_is_fixed(
    make_system: MakeSystem,
    event_log_factory,
    publisher_factory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    system = await make_system(services=["inventory"], with_sandbox=False)
    kafka = system.config.kafka
    log = await event_log_factory(kafka, [dead_letter_topic(topics.STOCK_RECEIVED)])
    shop = await publisher_factory(kafka)
    receipt = {"event_id": str(uuid4()), "warehouse_id": "NEW-1", "sku": "SKU-Z", "quantity": 4}
    await shop.send(topics.STOCK_RECEIVED, receipt, key="NEW-1")

    dead = (await log.wait(dead_letter_topic(topics.STOCK_RECEIVED)))[0]
    assert "unknown warehouse 'NEW-1'" in dead["error"]
    assert dead["attempts"] == 1  # a permanent failure is not retried

    assert await list_dead_letters(topic=None, as_json=True, kafka=kafka) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["original_topic"] for d in listed] == [topics.STOCK_RECEIVED]

    tokens = system.config.tokens
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.put(
            f"{system.urls['inventory']}/warehouses/NEW-1",
            json={"name": "New", "country": "DE", "postal_code": "04109"},
            headers=bearer(tokens["admin"]),
        )
        assert r.status_code == 200

        assert (
            await replay_dead_letters(
                topic=topics.STOCK_RECEIVED, event_id=receipt["event_id"], kafka=kafka
            )
            == 0
        )

        async def stocked() -> int:
            body = (
                await http.get(
                    f"{system.urls['inventory']}/stock/SKU-Z", headers=bearer(tokens["ops"])
                )
            ).json()
            return sum(w["on_hand"] for w in body["warehouses"])

        assert await wait_for(stocked, what="the replayed receipt to be counted") == 4
        # replaying again is absorbed by the inbox: still 4
        await replay_dead_letters(
            topic=topics.STOCK_RECEIVED, event_id=receipt["event_id"], kafka=kafka
        )
        runtime = system.runtimes["inventory"]
        await wait_for(lambda: runtime.consumer.duplicates >= 1, what="the second replay")
        assert await stocked() == 4
    assert len(await read_dead_letters(kafka, topic=topics.STOCK_RECEIVED)) == 1
