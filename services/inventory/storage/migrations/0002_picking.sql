-- Reserved goods wait here, per warehouse, until a wave puts them on a pick list.
CREATE TABLE picking_queue (
    id            bigserial   PRIMARY KEY,
    order_id      text        NOT NULL,
    warehouse_id  text        NOT NULL,
    sku           text        NOT NULL,
    bin           text        NOT NULL,
    quantity      integer     NOT NULL CHECK (quantity > 0),
    queued_at     timestamptz NOT NULL
);

CREATE INDEX picking_queue_warehouse ON picking_queue (warehouse_id, queued_at);
CREATE INDEX picking_queue_order ON picking_queue (order_id);

-- A line is open until picked in full; packed with its order; cancelled with its order.
ALTER TABLE picklist_lines
    ADD COLUMN picked_at     timestamptz,
    ADD COLUMN packed_at     timestamptz,
    ADD COLUMN cancelled_at  timestamptz,
    ADD CONSTRAINT picklist_lines_quantity_positive CHECK (quantity > 0),
    ADD CONSTRAINT picklist_lines_never_over_picked
        CHECK (picked_quantity >= 0 AND picked_quantity <= quantity);

CREATE INDEX picklist_lines_order ON picklist_lines (order_id);

-- A pick list is open while any of its lines is neither packed nor cancelled.
ALTER TABLE picklists ADD COLUMN closed_at timestamptz;

CREATE INDEX picklists_open ON picklists (warehouse_id, created_at) WHERE status = 'open';

-- One packing per order and warehouse: the parcels that left.
CREATE TABLE packings (
    order_id      text        NOT NULL,
    warehouse_id  text        NOT NULL,
    parcels       jsonb       NOT NULL,
    packed_at     timestamptz NOT NULL,
    PRIMARY KEY (order_id, warehouse_id)
);

-- Pick lists confirmed automatically before this migration were packed at once.
UPDATE picklist_lines l
   SET picked_at = p.created_at, packed_at = p.created_at
  FROM picklists p
 WHERE p.picklist_id = l.picklist_id AND p.status = 'done';
UPDATE picklists SET closed_at = created_at WHERE status = 'done';
INSERT INTO packings (order_id, warehouse_id, parcels, packed_at)
SELECT DISTINCT ON (l.order_id, p.warehouse_id) l.order_id, p.warehouse_id, '[]'::jsonb, p.created_at
  FROM picklist_lines l JOIN picklists p USING (picklist_id)
 WHERE p.status = 'done'
ON CONFLICT DO NOTHING;

-- Orders reserved before waves existed, and never picked, join the queue.
INSERT INTO picking_queue (order_id, warehouse_id, sku, bin, quantity, queued_at)
SELECT r.order_id, r.warehouse_id, r.sku, r.bin, r.quantity, r.created_at
  FROM reservations r JOIN inventory_orders o USING (order_id)
 WHERE r.status = 'reserved' AND o.status = 'reserved'
   AND NOT EXISTS (SELECT 1 FROM picklist_lines l WHERE l.order_id = r.order_id);
