-- what shipping keeps of each accepted order: where it goes and what was promised
CREATE TABLE shipping_orders (
    order_id       text        PRIMARY KEY,
    service_level  text        NOT NULL,
    placed_at      timestamptz NOT NULL,
    deliver_by     timestamptz NOT NULL,
    ship_to        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE shipments (
    shipment_id          uuid        PRIMARY KEY,
    order_id             text        NOT NULL,
    warehouse_id         text        NOT NULL,
    -- awaiting_order | label_pending | label_created | failed, then the tracking status
    state                text        NOT NULL,
    tracking_status      text,
    -- stored before the first attempt and reused by every retry: one label, ever
    idempotency_key      text        NOT NULL UNIQUE,
    ship_from            jsonb,
    parcels              jsonb       NOT NULL,
    lines                jsonb       NOT NULL DEFAULT '[]',
    carrier              text,
    service              text,
    tracking_number      text        UNIQUE,
    label_url            text,
    estimated_delivery   timestamptz,
    at_risk              boolean     NOT NULL DEFAULT false,
    attempts             integer     NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_error           text,
    label_created_at     timestamptz,
    shipped_at           timestamptz,
    delivered_at         timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, warehouse_id)
);

CREATE INDEX shipments_due ON shipments (next_attempt_at) WHERE state = 'label_pending';
CREATE INDEX shipments_order ON shipments (order_id);

CREATE TABLE tracking_events (
    id            bigserial   PRIMARY KEY,
    shipment_id   uuid        NOT NULL REFERENCES shipments,
    status        text        NOT NULL,
    at            timestamptz NOT NULL,
    source        text        NOT NULL,  -- webhook | poll | manual
    description   text,
    -- a replayed webhook or a re-polled event is recorded once
    dedupe_key    text        NOT NULL UNIQUE,
    received_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX tracking_events_shipment ON tracking_events (shipment_id, at);
