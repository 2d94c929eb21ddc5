-- cancelled orders: a packing event that arrives later buys no label
CREATE TABLE cancelled_orders (
    order_id      text        PRIMARY KEY,
    cancelled_at  timestamptz NOT NULL DEFAULT now()
);
