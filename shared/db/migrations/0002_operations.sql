-- Operations: re-driven copies in the outbox, and the consumer lag every instance measures.

-- A stuck order's events are published again as copies of their outbox rows; a copy names
-- the row it repeats, so that a second re-drive copies the originals and not the copies.
ALTER TABLE outbox ADD COLUMN redrive_of bigint;

-- Consumer lag per partition, from the high watermark of the instance's last fetch (the
-- embedded broker's ListOffsets is wrong). Whichever instance holds a partition writes its
-- row; rows not refreshed lately belong to partitions nobody holds now.
CREATE TABLE consumer_lag (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    lag          bigint      NOT NULL,
    instance     text        NOT NULL,
    measured_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
