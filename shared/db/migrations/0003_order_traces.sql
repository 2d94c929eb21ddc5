-- The trace context of each order's first trace, as this service first saw it (handling
-- orders.accepted). Work on the order that starts outside that trace (a pick list packed on
-- the warehouse page, a tracking update, a return request) joins it or links to it.
CREATE TABLE order_traces (
    order_id    text        PRIMARY KEY,
    headers     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
