-- Inbox, outbox and dead letters: the tables every service's messaging relies on.

CREATE TABLE inbox (
    consumer    text        NOT NULL,
    event_id    uuid        NOT NULL,
    handled_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

CREATE TABLE outbox (
    id            bigserial   PRIMARY KEY,
    -- the writing transaction: rows are published only once every transaction that
    -- could still commit a smaller id has finished (see shared/messaging/relay.py)
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id      uuid        NOT NULL,
    topic         text        NOT NULL,
    key           text,
    payload       bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_key ON outbox (key, id);

CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    key             text,
    value           bytea       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '[]',
    error           text        NOT NULL,
    error_type      text        NOT NULL,
    attempts        integer     NOT NULL,
    event_id        uuid,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    replayed_at     timestamptz,
    UNIQUE (consumer_group, topic, partition, "offset")
);
