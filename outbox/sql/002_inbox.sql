-- The inbox: which messages a consumer has processed. A record commits in
-- the same transaction as the handler's own writes.
CREATE TABLE {{.Schema}}ferry_inbox (
    consumer     text        NOT NULL,
    id           uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, id)
);
CREATE INDEX ferry_inbox_processed ON {{.Schema}}ferry_inbox (processed_at);
