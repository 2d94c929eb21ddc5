"""What ops see of one service's plumbing: outbox backlog, dead letters, consumer lag and (for
the services that buy labels) the carriers' circuits. ``GET /ops/health`` on every service
answers it; the orders dashboard and ``waybill sla`` gather the four answers.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from shared.db.uow import Connection
from shared.messaging.epoch import epoch_health
from shared.settings import ServiceSettings

#: when this process started (a restart shows as a later time)
STARTED_AT = datetime.now(UTC)

#: names the instance that measured a partition's lag
INSTANCE = f"{socket.gethostname()}:{os.getpid()}"


async def save_consumer_lag(conn: Connection, lag: dict[tuple[str, int], int]) -> None:
    """Record this instance's measurement of the partitions it holds."""
    if not lag:
        return
    keys = sorted(lag)
    await conn.execute(
        """
        INSERT INTO consumer_lag (topic, partition, lag, instance, measured_at)
        SELECT t, p, l, $4, now()
        FROM unnest($1::text[], $2::int[], $3::bigint[]) AS m(t, p, l)
        ON CONFLICT (topic, partition) DO UPDATE
            SET lag = excluded.lag, instance = excluded.instance,
                measured_at = excluded.measured_at
        """,
        [t for t, _ in keys],
        [p for _, p in keys],
        [lag[k] for k in keys],
        INSTANCE,
    )


async def messaging_health(conn: Connection, *, fresh_seconds: float) -> dict[str, Any]:
    """The service's outbox, dead letters (not replayed yet, per topic), consumer lag
    (per topic, summed over the partitions measured within ``fresh_seconds``) and the
    broker epoch it saw (with the broker data losses it found)."""
    outbox = await conn.fetchrow(
        """
        SELECT count(*) AS backlog,
               coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest
        FROM outbox WHERE id > (SELECT published_through FROM outbox_relay)
        """
    )
    dead = await conn.fetch(
        """
        SELECT topic, count(*) AS n FROM dead_letters WHERE replayed_at IS NULL
        GROUP BY topic ORDER BY topic
        """
    )
    lag = await conn.fetch(
        """
        SELECT topic, sum(lag) AS lag, count(*) AS partitions,
               extract(epoch FROM now() - min(measured_at)) AS age
        FROM consumer_lag WHERE measured_at > now() - make_interval(secs => $1)
        GROUP BY topic ORDER BY topic
        """,
        fresh_seconds,
    )
    assert outbox is not None
    return {
        "broker_epoch": await epoch_health(conn),
        "outbox_backlog": int(outbox["backlog"]),
        "outbox_oldest_seconds": round(float(outbox["oldest"]), 3),
        "dead_letters": sum(int(r["n"]) for r in dead),
        "dead_letters_by_topic": {r["topic"]: int(r["n"]) for r in dead},
        "consumer_lag": sum(int(r["lag"]) for r in lag),
        "consumer_lag_by_topic": {
            r["topic"]: {
                "lag": int(r["lag"]),
                "partitions": int(r["partitions"]),
                "measured_seconds_ago": round(float(r["age"]), 1),
            }
            for r in lag
        },
    }


def process_health(settings: ServiceSettings) -> dict[str, Any]:
    """This process: when it started, and how often the supervisor of ``waybill up`` had to
    start it again (with how it last ended). On Kubernetes, the pod's restart count."""
    return {
        "instance": INSTANCE,
        "started_at": STARTED_AT.isoformat(timespec="seconds"),
        "restarts": settings.supervisor_restarts,
        "last_exit": settings.supervisor_last_exit,
        "restarted_at": settings.supervisor_restarted_at,
    }
