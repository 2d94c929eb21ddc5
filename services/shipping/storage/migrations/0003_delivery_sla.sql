-- one row per order and stage: a breach is published exactly once
CREATE TABLE sla_breaches (
    order_id     text        NOT NULL,
    stage        text        NOT NULL,
    deadline     timestamptz NOT NULL,
    observed_at  timestamptz NOT NULL,
    PRIMARY KEY (order_id, stage)
);
