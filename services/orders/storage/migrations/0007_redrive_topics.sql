-- A re-drive publishes again only the events the overdue stage needs from the order's
-- status on (services/orders/domain/redrive.py): the topics it asked for. NULL: every
-- topic (the re-drives from before it was narrowed).
ALTER TABLE order_redrives ADD COLUMN topics text[];
