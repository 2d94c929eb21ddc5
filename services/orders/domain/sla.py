"""SLA windows: when a stage is at risk and how it stands. Pure rules on given times."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

#: a stage is at risk once this share of its window has passed without it being met
AT_RISK_SHARE = 0.8

#: stages whose breach orders publishes; delivery's is shipping's (it knows the carrier)
OWN_STAGES = ("accept", "dispatch")

SlaState = Literal["met", "breached", "at_risk", "pending", "cancelled"]


def at_risk_from(window_start: datetime, deadline: datetime) -> datetime:
    """The moment 80 % of the window has passed."""
    return window_start + (deadline - window_start) * AT_RISK_SHARE


def state_of(
    *,
    window_start: datetime,
    deadline: datetime,
    met_at: datetime | None,
    breached_at: datetime | None,
    closed: bool,
    now: datetime,
) -> SlaState:
    """How a stage stands at ``now``: a breach stays a breach even once it is met late."""
    if breached_at is not None or (met_at is not None and met_at > deadline):
        return "breached"
    if met_at is not None:
        return "met"
    if closed:
        return "cancelled"
    if now > deadline:
        return "breached"
    if now >= at_risk_from(window_start, deadline):
        return "at_risk"
    return "pending"


STAGE_NAMES = {
    "accept": "accept",
    "dispatch": "dispatch",
    "delivery": "delivery",
    "return_decision": "return decision",
}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
