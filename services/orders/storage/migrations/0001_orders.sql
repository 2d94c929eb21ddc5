CREATE TABLE orders (
    order_id             text        PRIMARY KEY,
    shop_id              text        NOT NULL,
    status               text        NOT NULL,
    service_level        text        NOT NULL,
    currency             text        NOT NULL,
    placed_at            timestamptz NOT NULL,
    content_hash         text        NOT NULL,
    lines                jsonb       NOT NULL,
    ship_to              jsonb       NOT NULL,
    customer             jsonb       NOT NULL,
    dispatch_by          timestamptz NOT NULL,
    deliver_by           timestamptz NOT NULL,
    replaces_order_id    text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX orders_status ON orders (status);

-- every event seen about an order, in the order it was handled
CREATE TABLE order_timeline (
    id          bigserial   PRIMARY KEY,
    order_id    text        NOT NULL,
    status      text        NOT NULL,
    at          timestamptz NOT NULL,
    topic       text        NOT NULL,
    event_id    uuid        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'
);

CREATE INDEX order_timeline_order ON order_timeline (order_id, id);

-- rejected submissions (a rejected order_id may be submitted again, corrected)
CREATE TABLE rejections (
    event_id    uuid        PRIMARY KEY,
    order_id    text        NOT NULL,
    reason      text        NOT NULL,
    reasons     jsonb       NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rejections_order ON rejections (order_id, rejected_at);
