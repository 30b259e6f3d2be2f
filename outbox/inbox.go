package outbox

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/idempotency"
)

// Inbox is the idempotency ledger on PostgreSQL: which messages one
// consumer (a name, usually its group) has processed. Handler writes the
// record in the same transaction as the handler's own writes.
type Inbox struct {
	pool                  *pgxpool.Pool
	name                  string
	ttl                   time.Duration
	insert, seen, cleanup string
}

var _ idempotency.Store = (*Inbox)(nil)

// NewInbox returns the inbox of the consumer called name, keeping records
// for ttl (they must outlive any redelivery: a message redelivered after
// its record was deleted is processed again). Run Migrate once first.
func NewInbox(pool *pgxpool.Pool, name string, ttl time.Duration, opts ...Option) (*Inbox, error) {
	if name == "" {
		return nil, fmt.Errorf("outbox: inbox needs a consumer name: %w", ferry.ErrInvalidArgument)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("outbox: inbox TTL %s: want a positive duration: %w", ttl, ferry.ErrInvalidArgument)
	}
	c := newConfig(opts)
	return &Inbox{
		pool: pool, name: name, ttl: ttl,
		insert:  c.expand(`INSERT INTO {{.Schema}}ferry_inbox (consumer, id) VALUES ($1, $2) ON CONFLICT DO NOTHING`),
		seen:    c.expand(`SELECT EXISTS (SELECT 1 FROM {{.Schema}}ferry_inbox WHERE consumer = $1 AND id = $2)`),
		cleanup: c.expand(`DELETE FROM {{.Schema}}ferry_inbox WHERE consumer = $1 AND processed_at < now() - $2::interval`),
	}, nil
}

// TxHandler processes a message with tx, the transaction that also holds
// its inbox record.
type TxHandler func(ctx context.Context, tx pgx.Tx, m *ferry.Message) error

// Handler returns a consumer handler that, for each message, begins a
// transaction, records the message's ID in the inbox and runs h with the
// transaction, committing both or neither. A message already recorded is
// skipped (its effects committed before). If h fails, its writes and the
// record roll back, and the runtime retries or dead-letters as usual.
//
// Two deliveries of one message at the same moment (possible only across a
// rebalance) serialize on the record's row: the second waits, then skips.
func (i *Inbox) Handler(h TxHandler) consumer.Handler {
	return func(ctx context.Context, m *ferry.Message) error {
		tx, err := i.pool.Begin(ctx)
		if err != nil {
			return fmt.Errorf("inbox: begin: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		first, err := i.MarkTx(ctx, tx, m.ID)
		if err != nil {
			return err
		}
		if !first {
			return nil
		}
		if err := h(ctx, tx, m); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("inbox: commit: %w", err)
		}
		return nil
	}
}

// MarkTx records id inside tx and reports whether this is its first
// record; false means the message was processed before (or is being
// processed by a transaction that has since committed).
func (i *Inbox) MarkTx(ctx context.Context, tx pgx.Tx, id ferry.ID) (first bool, err error) {
	tag, err := tx.Exec(ctx, i.insert, i.name, id)
	if err != nil {
		return false, fmt.Errorf("inbox: record %s: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Seen implements idempotency.Store.
func (i *Inbox) Seen(ctx context.Context, id ferry.ID) (bool, error) {
	var ok bool
	if err := i.pool.QueryRow(ctx, i.seen, i.name, id).Scan(&ok); err != nil {
		return false, fmt.Errorf("inbox: seen %s: %w", id, err)
	}
	return ok, nil
}

// Mark implements idempotency.Store, outside any transaction of the
// caller's (prefer Handler or MarkTx, which make the record atomic with the
// handler's writes).
func (i *Inbox) Mark(ctx context.Context, id ferry.ID) error {
	if _, err := i.pool.Exec(ctx, i.insert, i.name, id); err != nil {
		return fmt.Errorf("inbox: record %s: %w", id, err)
	}
	return nil
}

// Cleanup deletes this consumer's records older than the TTL and returns
// how many it deleted.
func (i *Inbox) Cleanup(ctx context.Context) (int64, error) {
	tag, err := i.pool.Exec(ctx, i.cleanup, i.name, i.ttl)
	if err != nil {
		return 0, fmt.Errorf("inbox: cleanup: %w", err)
	}
	return tag.RowsAffected(), nil
}
