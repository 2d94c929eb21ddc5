-- Webhooks to shops (docs/tenancy.md): each shop's endpoint, and every event about its
-- orders to deliver there, written in the transaction that handled or emitted the event
-- (an outbox of its own: at least once, whatever crashes), then sent, signed, by the
-- delivery worker (services/orders/webhooks.py) with retries.
CREATE TABLE shop_webhooks (
    shop_id     text        PRIMARY KEY,
    url         text        NOT NULL,
    topics      text[]      NOT NULL,
    -- the HMAC key deliveries are signed with: kept as it is, since signing needs it
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    delivery_id     bigserial   PRIMARY KEY,
    shop_id         text        NOT NULL,
    order_id        text        NOT NULL,
    event_id        uuid        NOT NULL,
    topic           text        NOT NULL,
    event           jsonb       NOT NULL,
    -- pending: to send (again); delivered: a 2xx came back; dead: retried for the whole
    -- retry window without one (POST .../retry sends it again)
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- a worker sending it holds it until then (several replicas share the work)
    leased_until    timestamptz,
    -- the retry window counts from here (a manual retry starts it again)
    window_start    timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (shop_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (shop_id, order_id, delivery_id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_of_shop ON webhook_deliveries (shop_id, delivery_id DESC);

CREATE TABLE webhook_attempts (
    delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    at           timestamptz NOT NULL,
    status_code  integer,
    error        text,
    duration_ms  integer     NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- The events the orders service emits itself (orders.accepted, orders.cancelled, ...) are
-- queued where they are written: in the outbox insert's own statement. Copies of published
-- rows (a re-drive, a broker-loss republish) are not events of their own.
CREATE FUNCTION queue_webhooks_of_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM shop_webhooks) THEN
        RETURN NULL;
    END IF;
    -- an event that names its shop (orders.accepted, orders.rejected) goes to that shop:
    -- a conflicting order_id sent by another shop is rejected to the shop that sent it,
    -- never to the one whose order holds the id
    INSERT INTO webhook_deliveries (shop_id, order_id, event_id, topic, event)
    SELECT w.shop_id, n.key, n.event_id, n.topic, n.event
    FROM (SELECT id, key, event_id, topic, convert_from(payload, 'UTF8')::jsonb AS event
          FROM written WHERE redrive_of IS NULL AND key IS NOT NULL) n
    JOIN shop_webhooks w
      ON w.shop_id = coalesce(n.event ->> 'shop_id',
                              (SELECT o.shop_id FROM orders o WHERE o.order_id = n.key))
     AND n.topic = ANY (w.topics)
    ORDER BY n.id
    ON CONFLICT (shop_id, event_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_queues_webhooks AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS written
    FOR EACH STATEMENT EXECUTE FUNCTION queue_webhooks_of_outbox();
