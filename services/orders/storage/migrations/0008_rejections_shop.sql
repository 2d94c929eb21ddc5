-- The shop a rejected submission named (when it named one): a shop's key reads only its
-- own rejections (docs/tenancy.md). Rejections from before have none: only role tokens
-- read them.
ALTER TABLE rejections ADD COLUMN shop_id text;
