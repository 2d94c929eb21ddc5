CREATE TABLE warehouses (
    warehouse_id  text        PRIMARY KEY,
    name          text        NOT NULL,
    country       text        NOT NULL,
    postal_code   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stock (
    warehouse_id  text    NOT NULL REFERENCES warehouses,
    sku           text    NOT NULL,
    bin           text    NOT NULL,
    on_hand       integer NOT NULL DEFAULT 0,
    reserved      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (warehouse_id, sku, bin),
    -- available = on_hand - reserved can never go negative: the database refuses it
    CONSTRAINT stock_on_hand_not_negative CHECK (on_hand >= 0),
    CONSTRAINT stock_reserved_not_negative CHECK (reserved >= 0),
    CONSTRAINT stock_available_not_negative CHECK (reserved <= on_hand)
);

CREATE INDEX stock_sku ON stock (sku);

CREATE TABLE inventory_orders (
    order_id          text        PRIMARY KEY,
    status            text        NOT NULL,  -- reserved | backordered | packed | cancelled
    lines             jsonb       NOT NULL,  -- [{sku, quantity}]
    ship_country      text        NOT NULL,
    ship_postal_code  text        NOT NULL,
    accepted_at       timestamptz NOT NULL,
    missing           jsonb       NOT NULL DEFAULT '{}',
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX inventory_orders_backordered ON inventory_orders (accepted_at)
    WHERE status = 'backordered';

CREATE TABLE reservations (
    id            bigserial   PRIMARY KEY,
    order_id      text        NOT NULL REFERENCES inventory_orders,
    warehouse_id  text        NOT NULL,
    sku           text        NOT NULL,
    bin           text        NOT NULL,
    quantity      integer     NOT NULL CHECK (quantity > 0),
    status        text        NOT NULL DEFAULT 'reserved',  -- reserved | packed | released
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX reservations_order ON reservations (order_id);

CREATE TABLE picklists (
    picklist_id   uuid        PRIMARY KEY,
    warehouse_id  text        NOT NULL,
    status        text        NOT NULL DEFAULT 'open',  -- open | done
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE picklist_lines (
    picklist_id      uuid    NOT NULL REFERENCES picklists,
    line_no          integer NOT NULL,
    order_id         text    NOT NULL,
    sku              text    NOT NULL,
    bin              text    NOT NULL,
    quantity         integer NOT NULL,
    picked_quantity  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (picklist_id, line_no)
);
