-- The broker epoch this service saw last (shared/messaging/epoch.py). When the broker shows
-- another one, it lost its data (a memory-only broker restarted, a cluster rebuilt): the
-- service publishes its recent outbox again. One row, written when the epoch changes.
CREATE TABLE broker_epoch (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch         text        NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    -- how often this service found the broker's data lost, and what it published again
    losses        integer     NOT NULL DEFAULT 0,
    last_loss_at  timestamptz,
    republished   bigint      NOT NULL DEFAULT 0
);

-- A dead letter was keyed by its record's place (group, topic, partition, offset). After
-- the broker lost its data, offsets start at 0 again: another record at the same place
-- was taken for one dead-lettered already and skipped. The key now includes the record's
-- bytes, so only a redelivery of the same record is absorbed.
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_consumer_group_topic_partition_offset_key;
CREATE UNIQUE INDEX dead_letters_record
    ON dead_letters (consumer_group, topic, partition, "offset", md5(value));
