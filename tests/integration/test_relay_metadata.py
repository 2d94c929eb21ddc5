"""The relay's producer keeps every topic its service publishes in its metadata.

aiokafka asks the broker only about the topics a producer tracks, and it tracks a topic
only when a send did not find it in the metadata it had. Its first metadata, at start,
holds every topic of the broker, so a topic sent to before the first refresh is never
tracked: that refresh drops it, and a record queued for it just before waits without a
leader until the request times out (30 s), then fails. In CI an orders service that had
just started did not publish an order's orders.accepted for 30 s that way.
"""

from __future__ import annotations

import pytest

from tests.conftest import MakeSystem
from tests.support import wait_for

pytestmark = pytest.mark.integration


async def test_every_published_topic_stays_in_the_relay_producers_metadata(
    make_system: MakeSystem,
) -> None:
    system = await make_system(services=["orders"])
    runtime = system.runtimes["orders"]
    prefix = system.config.kafka.topic_prefix
    # the epoch's first marker went through this producer, to a topic made after it
    # started: aiokafka tracks that one, and a refresh asks for what it tracks
    await wait_for(lambda: runtime.broker_epoch is not None, what="the broker epoch")
    client = runtime.producer.client
    await client.force_metadata_update()

    cluster = client.cluster
    missing = [
        t for t in runtime.definition.produces if not cluster.partitions_for_topic(prefix + t)
    ]
    assert missing == []
