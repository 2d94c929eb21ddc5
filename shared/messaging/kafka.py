"""Kafka clients built from :class:`~shared.settings.KafkaSettings`: one place for security."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from shared.settings import KafkaSettings

log = logging.getLogger("waybill.kafka")


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients: bootstrap servers and security."""
    options: dict[str, Any] = {"bootstrap_servers": settings.bootstrap}
    if settings.security == "PLAINTEXT":
        return options
    options["security_protocol"] = settings.security
    if settings.security in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(settings.cafile) if settings.cafile else None
        )
    if settings.security.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.username
        options["sasl_plain_password"] = (
            settings.password.get_secret_value() if settings.password else None
        )
    return options


def faststream_security(settings: KafkaSettings) -> BaseSecurity | None:
    """The same security settings in FastStream's terms (for the broker)."""
    if settings.security == "PLAINTEXT":
        return None
    ssl_context = (
        create_ssl_context(cafile=str(settings.cafile) if settings.cafile else None)
        if settings.security in ("SSL", "SASL_SSL")
        else None
    )
    if settings.security == "SSL":
        return BaseSecurity(ssl_context=ssl_context, use_ssl=True)
    username = settings.username or ""
    password = settings.password.get_secret_value() if settings.password else ""
    use_ssl = settings.security == "SASL_SSL"
    mechanisms: dict[str, type[SASLPlaintext] | type[SASLScram256] | type[SASLScram512]] = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }
    mechanism = mechanisms[settings.sasl_mechanism]
    return mechanism(username, password, ssl_context=ssl_context, use_ssl=use_ssl)


def create_producer(settings: KafkaSettings, *, client_id: str) -> AIOKafkaProducer:
    """A producer for the outbox relay: acks from all replicas, small linger to batch.

    The idempotent producer and transactions stay off: the embedded broker rejects
    them, and the inbox already makes redelivery harmless.
    """
    return AIOKafkaProducer(
        client_id=client_id,
        acks="all",
        # a relay sends a batch in one go: a millisecond lets it fill without adding latency
        linger_ms=1,
        max_batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=30_000,
        **client_options(settings),
    )


async def track_topics(producer: AIOKafkaProducer, names: Iterable[str]) -> None:
    """Have a started ``producer`` keep ``names`` (prefixed) in its metadata for good.

    aiokafka asks the broker only about the topics a producer tracks, and tracks a topic
    only when a send did not find it in the metadata the producer had. The first metadata,
    read at start, holds every topic of the broker; so a topic first sent to before the
    first refresh is never tracked, the first refresh drops it, and a record queued for it
    just then waits without a partition leader until the request times out (30 s here),
    then fails. A producer that tracks every topic it will publish from the start has no
    such gap. Topics it meets later are tracked by aiokafka as before."""
    client = producer.client
    for name in sorted(set(names)):
        client.add_topic(name)  # a new one asks for a refresh; awaited once below
    await client.force_metadata_update()


async def ensure_topics(
    settings: KafkaSettings,
    names: Iterable[str],
    *,
    partitions: int | None = None,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (idempotent, safe to race); names unprefixed.
    ``partitions`` and ``config`` override the settings' partition count and the broker's
    topic defaults for the topics created. Returns the (prefixed) names it created."""
    wanted = sorted({settings.topic_prefix + name for name in names})
    admin = AIOKafkaAdminClient(client_id="waybill-admin", **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.replication_factor,
                topic_configs=config or {},
            )
            for name in wanted
            if name not in existing
        ]
        if not missing:
            return []
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            return []
        for topic, code, *_ in getattr(response, "topic_errors", []):
            # 36: TOPIC_ALREADY_EXISTS, when another service created it meanwhile.
            if code not in (0, 36):
                raise RuntimeError(f"could not create topic {topic}: error code {code}")
        log.info("created topics %s", ", ".join(t.name for t in missing))
        return [t.name for t in missing]
    finally:
        await admin.close()
