-- Return labels go through the shared purchaser (choice stored before buying, pinned
-- after a call the carrier may have acted on), and returns are received and refunded.
ALTER TABLE returns ADD COLUMN label_carrier text;
ALTER TABLE returns ADD COLUMN label_service text;
ALTER TABLE returns ADD COLUMN carrier_pinned boolean NOT NULL DEFAULT false;
-- where the parcel goes back to: the warehouse that shipped it ({country, postal_code})
ALTER TABLE returns ADD COLUMN return_to jsonb;
-- status now: label_pending | approved | rejected | label_failed | received
ALTER TABLE returns ADD COLUMN received_at timestamptz;
ALTER TABLE returns ADD COLUMN received_lines jsonb;
ALTER TABLE returns ADD COLUMN refund_amount numeric(12, 2);
ALTER TABLE returns ADD COLUMN replacement_order_id text;
