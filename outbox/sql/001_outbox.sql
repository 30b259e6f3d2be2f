-- The outbox: messages written in the caller's transaction, published by
-- relays in order per (topic, key). seq gives the order; lock_key is the
-- advisory lock that keeps two relays off the same key.
CREATE TABLE {{.Schema}}ferry_outbox (
    seq           bigserial PRIMARY KEY,
    id            uuid        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    msg_key       bytea       NOT NULL,
    lock_key      integer     NOT NULL,
    partition     integer,
    header_keys   text[]      NOT NULL,
    header_values bytea[]     NOT NULL,
    payload       bytea,
    not_before    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    sent_at       timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX ferry_outbox_unsent ON {{.Schema}}ferry_outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX ferry_outbox_unsent_key ON {{.Schema}}ferry_outbox (lock_key, seq) WHERE sent_at IS NULL;
CREATE INDEX ferry_outbox_sent ON {{.Schema}}ferry_outbox (sent_at) WHERE sent_at IS NOT NULL;
