-- Who may call this service's HTTP API besides the role tokens: shop keys (orders owns
-- them) and staff keys (inventory owns them), each service's own copy, kept from the
-- shops.key-changed and staff.key-changed events (shared/tenancy.py). Only a key's SHA-256
-- is kept, never the key.
CREATE TABLE access_keys (
    key_id        text        PRIMARY KEY,
    kind          text        NOT NULL CHECK (kind IN ('shop', 'staff')),
    key_hash      bytea       NOT NULL CHECK (length(key_hash) = 32),
    shop_id       text,
    staff_id      text,
    staff_name    text,
    warehouse_ids text[],
    created_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    -- when the state was written where it is owned: a copy keeps the newest it has seen
    changed_at    timestamptz NOT NULL,
    -- the last request this service took with the key (written at most once a minute)
    last_used_at  timestamptz,
    CHECK ((kind = 'shop') = (shop_id IS NOT NULL)),
    CHECK ((kind = 'staff') = (staff_id IS NOT NULL AND warehouse_ids IS NOT NULL))
);

CREATE INDEX access_keys_of_shop ON access_keys (shop_id, created_at) WHERE kind = 'shop';
CREATE INDEX access_keys_of_staff ON access_keys (staff_id) WHERE kind = 'staff';
