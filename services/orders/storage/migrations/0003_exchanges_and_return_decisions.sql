-- the return behind a replacement order (exchanges)
ALTER TABLE orders ADD COLUMN replaces_return_id text;

-- the return-decision SLA: every return request must be decided in time
CREATE TABLE return_decisions (
    return_id     text        PRIMARY KEY,
    order_id      text        NOT NULL,
    requested_at  timestamptz NOT NULL,  -- when orders saw the request
    deadline      timestamptz NOT NULL,
    decided_at    timestamptz,
    decision      text,                  -- approved | rejected
    breached_at   timestamptz            -- when sla.breached was published (once)
);

CREATE INDEX return_decisions_open ON return_decisions (deadline)
    WHERE decided_at IS NULL AND breached_at IS NULL;
