"""deploy/kafka/acls.sh: generated from the services' own topics, up to date, and what it
grants when run (against a stand-in for kafka-acls.sh that records its arguments)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from shared import topics
from waybill.kafka_acls import render

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "acls.sh"


def test_the_committed_script_is_up_to_date() -> None:
    assert SCRIPT.read_text() == render(), "run `waybill kafka-acls --output deploy/kafka/acls.sh`"


def test_each_principal_gets_its_own_topics_and_integrations_no_internal_ones(
    tmp_path: Path,
) -> None:
    recorder = tmp_path / "kafka-acls.sh"
    log = tmp_path / "calls"
    recorder.write_text('#!/bin/sh\necho "$@" >> "$ACL_LOG"\n')
    recorder.chmod(0o755)
    env = {
        **os.environ,
        "ACL_LOG": str(log),
        "KAFKA_ACLS": str(recorder),
        "BOOTSTRAP": "kafka:9093",
        "COMMAND_CONFIG": "admin.properties",
        "PREFIX": "prod.",
        "INTEGRATIONS": "User:shop-platform",
    }
    subprocess.run(["bash", str(SCRIPT)], env=env, check=True)
    calls = log.read_text().splitlines()

    def granted(principal: str, operation: str, topic: str) -> bool:
        return any(
            f"--allow-principal {principal} " in c
            and f"--operation {operation}" in c
            and c.endswith(f"--topic prod.{topic}")
            for c in calls
        )

    assert granted("User:waybill-shipping", "Read", topics.ORDERS_PACKED)
    assert granted("User:waybill-shipping", "Write", topics.SHIPMENTS_LABEL_CREATED)
    assert not granted("User:waybill-shipping", "Write", topics.ORDERS_ACCEPTED)
    assert granted("User:waybill-orders", "Write", topics.SHOPS_KEY_CHANGED)
    assert granted("User:waybill-inventory", "Write", topics.STAFF_KEY_CHANGED)
    assert granted("User:waybill-returns", "Read", topics.STAFF_KEY_CHANGED)
    assert granted("User:shop-platform", "Write", topics.ORDERS_PLACED)
    assert granted("User:shop-platform", "Read", topics.SHIPMENTS_DELIVERED)
    for internal in (
        topics.SHOPS_KEY_CHANGED,
        topics.STAFF_KEY_CHANGED,
        topics.WAREHOUSE_RETURN_SCANNED,
    ):
        assert not granted("User:shop-platform", "Read", internal)
    assert any("--group prod.waybill-orders" in c for c in calls)
    assert all(
        "--bootstrap-server kafka:9093 --command-config admin.properties" in c for c in calls
    )
