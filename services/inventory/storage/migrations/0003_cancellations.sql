-- orders cancelled before inventory saw them accepted: a late acceptance reserves nothing
CREATE TABLE cancelled_orders (
    order_id      text        PRIMARY KEY,
    cancelled_at  timestamptz NOT NULL DEFAULT now()
);

-- backorders are served oldest first by when the order was placed
ALTER TABLE inventory_orders ADD COLUMN placed_at timestamptz;
UPDATE inventory_orders SET placed_at = accepted_at WHERE placed_at IS NULL;
ALTER TABLE inventory_orders ALTER COLUMN placed_at SET NOT NULL;
DROP INDEX inventory_orders_backordered;
CREATE INDEX inventory_orders_backordered ON inventory_orders (placed_at, order_id)
    WHERE status = 'backordered';
