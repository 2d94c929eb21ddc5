-- what returns keeps of each order (its own copy: it never asks another service)
CREATE TABLE return_orders (
    order_id    text        PRIMARY KEY,
    currency    text        NOT NULL,
    lines       jsonb       NOT NULL,  -- [{sku, quantity, unit_price}]
    ship_to     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    shipment_id   uuid        PRIMARY KEY,
    order_id      text        NOT NULL,
    delivered_at  timestamptz NOT NULL,
    carrier       text,
    warehouse_id  text,
    ship_from     jsonb,
    lines         jsonb       NOT NULL,  -- [{sku, quantity}]
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX deliveries_order ON deliveries (order_id);

CREATE TABLE returns (
    return_id        text        PRIMARY KEY,
    order_id         text        NOT NULL,
    -- label_pending | approved | rejected
    status           text        NOT NULL,
    reason           text,
    requested_at     timestamptz NOT NULL,
    decided_at       timestamptz,
    request_hash     text        NOT NULL,
    lines            jsonb       NOT NULL,
    resolution       text        NOT NULL,
    exchange_for     jsonb,
    rma              text,
    carrier          text,
    warehouse_id     text,
    ship_to          jsonb,
    idempotency_key  text        NOT NULL UNIQUE,
    label            jsonb,
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX returns_order ON returns (order_id);
CREATE INDEX returns_label_due ON returns (next_attempt_at) WHERE status = 'label_pending';
