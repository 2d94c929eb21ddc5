-- The shop of each order (from orders.accepted): a shop's key reads the shipments of its
-- own shop's orders only (docs/tenancy.md). Orders from before have none: only role tokens
-- read them.
ALTER TABLE shipping_orders ADD COLUMN shop_id text;
