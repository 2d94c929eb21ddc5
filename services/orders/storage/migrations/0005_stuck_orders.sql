-- Stuck orders: a stage past its deadline without progress is re-driven once (the order's
-- events published again from every service's outbox); if the order still has not moved
-- after the wait, it is reported. return_id is '' for the order's own stages.
CREATE TABLE order_redrives (
    order_id      text        NOT NULL,
    stage         text        NOT NULL,
    return_id     text        NOT NULL DEFAULT '',
    status        text        NOT NULL,   -- the order's status when it was re-driven
    deadline      timestamptz NOT NULL,
    redriven_at   timestamptz NOT NULL,
    republished   integer     NOT NULL,   -- events orders itself published again
    resolved_at   timestamptz,            -- the order moved on (or the stage was met)
    reported_at   timestamptz,            -- it did not within the wait: reported as stuck
    PRIMARY KEY (order_id, stage, return_id)
);

CREATE INDEX order_redrives_open ON order_redrives (redriven_at) WHERE resolved_at IS NULL;

-- stages not met, breached or not: the stuck-order check looks at the overdue ones
CREATE INDEX order_slas_unmet ON order_slas (deadline) WHERE met_at IS NULL AND NOT closed;
CREATE INDEX return_decisions_undecided ON return_decisions (deadline) WHERE decided_at IS NULL;
