-- The SLA engine: one row per order and stage (accept, dispatch, delivery), with its window.
-- orders publishes the breaches of accept and dispatch; delivery's come from shipping and
-- are recorded here so that ops see every stage in one place.
CREATE TABLE order_slas (
    order_id      text        NOT NULL,
    stage         text        NOT NULL,
    window_start  timestamptz NOT NULL,
    deadline      timestamptz NOT NULL,
    met_at        timestamptz,
    at_risk_at    timestamptz,   -- when 80 % of the window had passed without the stage met
    breached_at   timestamptz,   -- observed_at of the one sla.breached
    closed        boolean     NOT NULL DEFAULT false,  -- the order was cancelled
    PRIMARY KEY (order_id, stage)
);

CREATE INDEX order_slas_open ON order_slas (deadline)
    WHERE met_at IS NULL AND breached_at IS NULL AND NOT closed;
