-- shipments_order duplicated the leading column of UNIQUE (order_id, warehouse_id), which
-- serves every lookup by order; each new row version paid for both.
DROP INDEX shipments_order;
