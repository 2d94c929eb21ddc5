"""Consumer group membership where aiokafka and the brokers it meets leave gaps.

Kafka numbers a group's generations from 1, and aiokafka sends LeaveGroup when a consumer
closes only if its generation is above 0. Tansu (the embedded broker) numbers them from 0:
a consumer that was its group's first member leaves without a word, and Tansu keeps it
as the group's leader, so every later member waits for an assignment that the gone
leader never sends (seen with two replicas, one stopped and started again: the other
never got a partition). :func:`leave_unannounced` says it for them after they stopped.
Tansu also keeps a leader that leaves while its group rebalances:
:func:`settle_before_leaving` lets the rebalance finish first.

After a broker lost its data, a group may hold an assignment made from a partial picture
of the topics (:func:`rejoin_as_new_member`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import JoinGroupRequest, LeaveGroupRequest

log = logging.getLogger("waybill.groups")

UNKNOWN_MEMBER = JoinGroupRequest.UNKNOWN_MEMBER_ID


@dataclass(frozen=True)
class Membership:
    """A consumer's place in its group, as its coordinator knows it."""

    group_id: str
    member_id: str
    coordinator_id: int


def unannounced_leaves(consumers: Sequence[AIOKafkaConsumer]) -> list[Membership]:
    """The memberships that closing ``consumers`` will not end with a LeaveGroup: members
    of a generation 0. Read them before the consumers stop (closing forgets them)."""
    found = []
    for consumer in consumers:
        coordinator = getattr(consumer, "_coordinator", None)
        member_id = getattr(coordinator, "member_id", None)
        if coordinator is None or member_id in (None, UNKNOWN_MEMBER):
            continue
        if coordinator.generation == 0 and coordinator.coordinator_id is not None:
            found.append(Membership(coordinator.group_id, member_id, coordinator.coordinator_id))
    return found


async def leave_unannounced(client: AIOKafkaClient, memberships: Sequence[Membership]) -> None:
    """Send the LeaveGroup the stopped consumers did not send, through another client of
    the same broker (theirs are closed). Best effort, as aiokafka's own: a member the
    broker does not hear from leaves at its session timeout anyway."""
    for m in memberships:
        try:
            await client.send(
                m.coordinator_id,
                LeaveGroupRequest(m.group_id, m.member_id),
                group=ConnectionGroup.COORDINATION,
            )
        except KafkaError as exc:
            log.info("leaving group %s as %s: %s", m.group_id, m.member_id, exc)
        else:
            log.info("left group %s as %s", m.group_id, m.member_id)


async def rejoin_as_new_member(consumer: AIOKafkaConsumer, *, timeout: float = 30.0) -> bool:
    """Have ``consumer`` leave its group and join it again as a new member, and wait until
    it holds partitions again (True) or ``timeout`` passed (False).

    After a loss a topic may come back with more partitions than before (a broker that
    makes a topic when a record arrives for it; Tansu makes 4), and a group that joined the
    new broker before the topics were all made was assigned from a partial picture. The
    group must be assigned again from the metadata as it is now. A Kafka broker rebalances
    when a group's leader joins again, and aiokafka's leader does so when its metadata
    changes; Tansu answers such a join with the group's stored assignment. A new member in
    a group whose old member left is assigned from scratch by every broker, so that is
    what this does, with the group coordinator's own requests (aiokafka has no public call
    for either). A join under way is let finish first: a member the broker admitted and
    nobody leaves for would hold the next join up for a session timeout."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "member_id", None) is None:
        return True  # no group: the consumer assigns its partitions itself
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    await _until(functools.partial(_settled, coordinator), deadline)
    member_id = coordinator.member_id
    if member_id != UNKNOWN_MEMBER:
        try:
            await coordinator._send_req(LeaveGroupRequest(coordinator.group_id, member_id))
        except KafkaError as exc:  # the broker forgot the member already
            log.info("leaving group %s: %s", coordinator.group_id, exc)
    subscription = consumer._subscription.subscription
    held = subscription.assignment if subscription is not None else None
    coordinator.reset_generation()  # a new member id, and a join at the next round

    def assigned_again() -> bool:  # each join's assignment is a new object
        subscription = consumer._subscription.subscription
        return subscription is not None and subscription.assignment not in (None, held)

    return await _until(assigned_again, deadline)


def _joining(coordinator: Any) -> bool:
    """Whether the consumer is (about to be) in a join: between a rebalance it heard of and
    the assignment that ends it."""
    return bool(
        coordinator._performed_join_prepare
        or coordinator._rejoin_needed_fut.done()
        or coordinator.member_id == UNKNOWN_MEMBER
    )


def _settled(coordinator: Any) -> bool:
    return not _joining(coordinator)


async def settle_before_leaving(consumers: Sequence[AIOKafkaConsumer], *, timeout: float) -> None:
    """Before ``consumers`` stop: let a rebalance of their groups under way complete.

    Tansu mishandles a leader that leaves while its group rebalances: the leader stays
    named in every later JoinGroup response, never sends the assignment, and the members
    that remain fail their SyncGroup for good (seen in ``waybill chaos rebalance``: a
    replica stopped 3 s after the other one started). Left from a settled group, the same
    leader is replaced. So each consumer asks with a heartbeat whether its group is
    rebalancing (its own heartbeats come every few seconds), and if so takes part until
    the rebalance completes, at most ``timeout`` seconds. Kafka needs none of this, and
    it costs nothing there but the heartbeat."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for consumer in consumers:
        coordinator = getattr(consumer, "_coordinator", None)
        if coordinator is None or getattr(coordinator, "member_id", None) is None:
            continue
        if not _joining(coordinator):
            await coordinator._do_heartbeat()  # a rebalance: it asks for the rejoin itself
        if _settled(coordinator):
            continue
        started = loop.time()
        settled = await _until(functools.partial(_settled, coordinator), deadline)
        log.info(
            "group %s was rebalancing; %s before leaving (%.1f s)",
            coordinator.group_id,
            "took part until it settled" if settled else "gave up waiting",
            loop.time() - started,
        )


async def _until(condition: Callable[[], bool], deadline: float) -> bool:
    """Whether ``condition`` held before ``deadline`` (the loop's clock); aiokafka's
    coordinator offers nothing to wait on for it, so it is looked at every 50 ms."""
    loop = asyncio.get_running_loop()
    while not condition():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True
