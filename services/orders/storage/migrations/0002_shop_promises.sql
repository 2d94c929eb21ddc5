-- per-shop promise settings; shops without a row get the house promise
CREATE TABLE shop_promises (
    shop_id                 text        PRIMARY KEY,
    time_zone               text        NOT NULL,
    standard_cutoff         time        NOT NULL,
    express_cutoff          time        NOT NULL,
    collection_time         time        NOT NULL,
    standard_business_days  integer     NOT NULL CHECK (standard_business_days BETWEEN 1 AND 30),
    express_business_days   integer     NOT NULL CHECK (express_business_days BETWEEN 1 AND 30),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
