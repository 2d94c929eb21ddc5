-- The shop of each order (from orders.accepted): a shop's key reads the returns of its own
-- shop's orders only (docs/tenancy.md). Orders from before have none: only role tokens read
-- them.
ALTER TABLE return_orders ADD COLUMN shop_id text;
