-- A purchase call that may have reached the carrier (a timeout, a 500) pins the shipment to
-- that carrier and service: retries replay the same idempotency key and never buy elsewhere.
ALTER TABLE shipments ADD COLUMN carrier_pinned boolean NOT NULL DEFAULT false;
-- the carrier's own id of the label, which voiding it needs
ALTER TABLE shipments ADD COLUMN carrier_shipment_id text;
ALTER TABLE shipments ADD COLUMN voided_at timestamptz;
-- states now: awaiting_order | label_pending | label_created | label_failed
--             | void_pending | cancelled | void_refused
CREATE INDEX shipments_void_due ON shipments (next_attempt_at) WHERE state = 'void_pending';
