-- returns the warehouse expects (from returns.approved), shown on the warehouse page by RMA
CREATE TABLE expected_returns (
    return_id     text        PRIMARY KEY,
    rma           text        NOT NULL,
    order_id      text        NOT NULL,
    -- the warehouse that shipped the goods and takes them back; NULL: none known, so the
    -- return is listed on no page (it can still be received with POST /returns/{id}/received)
    warehouse_id  text,
    lines         jsonb       NOT NULL,  -- [{sku, quantity}]
    resolution    text        NOT NULL,
    -- expected | scanned (received on the page, waiting for returns) | received
    status        text        NOT NULL DEFAULT 'expected',
    approved_at   timestamptz NOT NULL,
    scanned_at    timestamptz,
    received_at   timestamptz
);

CREATE INDEX expected_returns_open ON expected_returns (warehouse_id, approved_at)
    WHERE status = 'expected';

-- what each return put back on the shelf: once per return and sku, whatever is redelivered
CREATE TABLE restocks (
    return_id     text        NOT NULL,
    sku           text        NOT NULL,
    warehouse_id  text        NOT NULL,
    bin           text        NOT NULL,
    quantity      integer     NOT NULL CHECK (quantity > 0),
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (return_id, sku)
);

-- damaged goods that came back: never on hand, counted here
CREATE TABLE write_offs (
    return_id     text        NOT NULL,
    sku           text        NOT NULL,
    warehouse_id  text        NOT NULL,
    quantity      integer     NOT NULL CHECK (quantity > 0),
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (return_id, sku)
);
