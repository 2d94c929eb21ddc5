"""Consumer group membership on a real broker (shared/messaging/groups.py): a replica that
stops leaves its group, so that the members after it are assigned."""

from __future__ import annotations

import pytest

from shared.infra.kafka import EmbeddedKafka
from tests.conftest import MakeSystem, kafka_on
from tests.support import wait_for

pytestmark = pytest.mark.integration


async def test_a_replica_that_stops_leaves_its_group_and_the_next_one_is_assigned_at_once(
    own_broker: EmbeddedKafka, make_system: MakeSystem
) -> None:
    """The first member of a group on a fresh broker is of generation 0 on Tansu, and
    aiokafka sends LeaveGroup only above 0. Silent, it stays in the group until its session
    times out (here 30 s, past the wait below); on Tansu it stays the group's
    leader, and the next member is never assigned. The runtime says the leave itself. (The
    embedded broker completes a join after half the session timeout: 15 s each here.)"""
    # its own broker: the group starts at this test's first join
    kafka = kafka_on(own_broker, "leave.", session_timeout_ms=30_000, heartbeat_interval_ms=1_000)
    first = await make_system(services=["returns"], with_sandbox=False, kafka=kafka)
    runtime = first.runtimes["returns"]
    every = await wait_for(runtime.assigned_partitions, what="the first replica's partitions")
    await first.stop()  # a replica scaled in: stopped gracefully

    second = await make_system(services=["returns"], with_sandbox=False, kafka=kafka)
    follower = second.runtimes["returns"]
    await wait_for(
        lambda: follower.assigned_partitions() == every,
        timeout=25,
        what="every partition assigned to the replica that came next",
    )
