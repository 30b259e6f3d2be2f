// Package outbox closes the gap between a service's database and its
// messages, on PostgreSQL (pgx): the transactional outbox and the inbox.
//
// With the outbox, a service adds messages inside its own transaction
// (Outbox.Add); they exist if and only if the business writes committed.
// A Relay publishes them to any ferry backend in order per (topic, key),
// marks them sent and deletes them after a retention. Several relays may
// run at once: each takes the keys it can lock with a per-key advisory
// try-lock (skipping keys another relay holds, never waiting on them),
// then claims those keys' rows FOR UPDATE in order (not SKIP LOCKED: a
// skipped row of a key would let a later one overtake it), so no key is
// published out of order by two relays. A relay that crashes between
// publishing and marking publishes the same message IDs again; the
// backend's producer deduplication drops them (JetStream's duplicate
// window too; Kafka has none, so consume through the inbox there).
//
// The inbox (Inbox) records processed message IDs in the same transaction
// as a handler's own writes, so a redelivered message has no second
// effect, and a failed handler rolls back both.
package outbox

import (
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"
)

// Option configures the outbox and inbox tables' location.
type Option func(*config)

type config struct {
	schema string // quoted, with a trailing dot; empty = search_path
	logger *slog.Logger
}

// WithSchema puts the tables in schema (default: the connection's
// search_path).
func WithSchema(schema string) Option {
	return func(c *config) {
		if schema != "" {
			c.schema = pgx.Identifier{schema}.Sanitize() + "."
		}
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

func newConfig(opts []Option) config {
	c := config{logger: slog.Default()}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// expand puts the schema qualifier into a statement.
func (c config) expand(sql string) string { return strings.ReplaceAll(sql, "{{.Schema}}", c.schema) }

// Outbox adds messages to the outbox table in callers' transactions.
type Outbox struct {
	pool   *pgxpool.Pool
	cfg    config
	insert string
}

// New returns the outbox on pool's database. Run Migrate once first.
func New(pool *pgxpool.Pool, opts ...Option) *Outbox {
	c := newConfig(opts)
	return &Outbox{pool: pool, cfg: c, insert: c.expand(`INSERT INTO {{.Schema}}ferry_outbox
		(id, topic, msg_key, lock_key, partition, header_keys, header_values, payload, not_before)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`)}
}

// Add writes msgs to the outbox inside tx: they will be published if and
// only if tx commits. A message without an ID gets one (a UUIDv7), which
// is what deduplicates a relay's retry downstream. Topic is required;
// Partition is kept when PinPartition is set; NotBefore delays delivery
// where the backend supports it. Messages of one (topic, key) are
// published in the order they were added.
func (o *Outbox) Add(ctx context.Context, tx pgx.Tx, msgs ...*ferry.Message) error {
	for i, m := range msgs {
		if m == nil || m.Topic == "" {
			return fmt.Errorf("outbox: message %d has no topic: %w", i, ferry.ErrInvalidArgument)
		}
	}
	batch := &pgx.Batch{}
	for _, m := range msgs {
		if m.ID.IsZero() {
			m.ID = ferry.NewID()
		}
		var part *int32
		if m.PinPartition {
			part = &m.Partition
		}
		var notBefore *time.Time
		if !m.NotBefore.IsZero() {
			notBefore = &m.NotBefore
		}
		keys := make([]string, len(m.Headers))
		values := make([][]byte, len(m.Headers))
		for i, h := range m.Headers {
			keys[i], values[i] = h.Key, h.Value
		}
		key := m.Key
		if key == nil {
			key = []byte{}
		}
		batch.Queue(o.insert, m.ID, m.Topic, key, lockKey(m), part, keys, values, m.Payload, notBefore)
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("outbox: add %d messages: %w", len(msgs), err)
	}
	return nil
}

// Pending reports how many messages wait to be published and when the
// oldest of them was added (zero when none): the relay's lag.
func (o *Outbox) Pending(ctx context.Context) (n int64, oldest time.Time, err error) {
	var at *time.Time
	err = o.pool.QueryRow(ctx, o.cfg.expand(
		"SELECT count(*), min(created_at) FROM {{.Schema}}ferry_outbox WHERE sent_at IS NULL")).Scan(&n, &at)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("outbox: pending: %w", err)
	}
	if at != nil {
		oldest = *at
	}
	return n, oldest, nil
}

// lockKey is the advisory lock of a message's ordering scope, (topic,
// key). Keyless messages have no order to keep; their ID spreads them.
// A hash collision only makes two keys share a relay, never reorders.
func lockKey(m *ferry.Message) int32 {
	h := fnv.New32a()
	h.Write([]byte(m.Topic))
	h.Write([]byte{0})
	if len(m.Key) == 0 {
		h.Write(m.ID[:])
	} else {
		h.Write(m.Key)
	}
	return int32(h.Sum32())
}
