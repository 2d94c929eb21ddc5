-- The relay keeps one watermark, the id through which every outbox row is published,
-- instead of marking each row: ids are in commit order (0004), so the published rows are
-- exactly those up to the watermark. One small update per published batch instead of one
-- row version per event.
CREATE TABLE outbox_relay (
    singleton          boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    published_through  bigint      NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Rows not yet marked, and any after them, count as unpublished: at worst some are
-- published once more, and consumers' inboxes absorb them.
INSERT INTO outbox_relay (published_through)
SELECT coalesce((SELECT min(id) - 1 FROM outbox WHERE published_at IS NULL),
                (SELECT max(id) FROM outbox), 0);

DROP INDEX outbox_unpublished;
ALTER TABLE outbox DROP COLUMN published_at;
