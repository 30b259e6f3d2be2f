package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/retry"
)

// RelayStats is what a relay reports after each attempt to publish a
// batch, for metrics: relay lag and errors.
type RelayStats struct {
	Published int           // messages published and marked sent
	Lag       time.Duration // age of the oldest message published (0 if none)
	Err       error         // the failure, if the batch failed
	Failures  int           // consecutive failed batches so far
	Delay     time.Duration // backoff before the next try, after a failure
}

// RelayOption configures a Relay.
type RelayOption func(*Relay)

// WithBatchSize sets how many messages one transaction publishes (default
// 500, at most 65534).
func WithBatchSize(n int) RelayOption { return func(r *Relay) { r.batch = n } }

// WithPollInterval sets how long an idle relay waits before looking for
// new messages (default 100ms). A relay that found a full batch looks
// again at once.
func WithPollInterval(d time.Duration) RelayOption { return func(r *Relay) { r.poll = d } }

// WithRetryPolicy sets the backoff between failed batches (its
// InitialBackoff and MaxBackoff; a relay never gives up, since skipping a
// message would break its key's order).
func WithRetryPolicy(p retry.Policy) RelayOption { return func(r *Relay) { r.policy = p } }

// WithRetention sets how long sent messages stay in the table before the
// relay deletes them (default 24h; negative keeps them).
func WithRetention(d time.Duration) RelayOption { return func(r *Relay) { r.retention = d } }

// WithObserver receives RelayStats after every batch attempt that
// published something or failed. It runs on the relay's goroutine: keep
// it fast.
func WithObserver(f func(RelayStats)) RelayOption { return func(r *Relay) { r.observe = f } }

// Relay publishes the outbox's messages to a backend.
type Relay struct {
	o         *Outbox
	b         backend.Backend
	batch     int
	poll      time.Duration
	policy    retry.Policy
	retention time.Duration
	observe   func(RelayStats)
	log       *slog.Logger
	rng       *rand.Rand

	candidates, lock, claim, markSent, markFailed, cleanup string

	// afterPublish, for tests, runs between publishing and marking sent.
	afterPublish func() error
}

// NewRelay returns a relay from o to b.
func (o *Outbox) NewRelay(b backend.Backend, opts ...RelayOption) *Relay {
	r := &Relay{
		o: o, b: b, batch: 500, poll: 100 * time.Millisecond,
		policy:    retry.Policy{InitialBackoff: 50 * time.Millisecond, MaxBackoff: 10 * time.Second},
		retention: 24 * time.Hour, log: o.cfg.logger,
		rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	for _, opt := range opts {
		opt(r)
	}
	r.policy = r.policy.WithDefaults()
	x := o.cfg.expand
	r.candidates = x(`SELECT DISTINCT lock_key FROM (SELECT lock_key FROM {{.Schema}}ferry_outbox
		WHERE sent_at IS NULL ORDER BY seq LIMIT $1) c`)
	r.lock = `SELECT coalesce(array_agg(k), '{}') FROM unnest($1::integer[]) k WHERE pg_try_advisory_xact_lock($2, k)`
	r.claim = x(`SELECT seq, id, topic, msg_key, partition, header_keys, header_values, payload, not_before, created_at
		FROM {{.Schema}}ferry_outbox WHERE sent_at IS NULL AND lock_key = ANY($1) ORDER BY seq LIMIT $2 FOR UPDATE`)
	r.markSent = x(`UPDATE {{.Schema}}ferry_outbox SET sent_at = now(), attempts = attempts + 1 WHERE seq = ANY($1)`)
	r.markFailed = x(`UPDATE {{.Schema}}ferry_outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = ANY($1)`)
	r.cleanup = x(`DELETE FROM {{.Schema}}ferry_outbox WHERE seq IN (SELECT seq FROM {{.Schema}}ferry_outbox
		WHERE sent_at < now() - $1::interval ORDER BY sent_at LIMIT 10000)`)
	return r
}

// lockClass is the first half of the relay's advisory locks, so that they
// do not meet an application's own.
const lockClass = 0x6f757462 // "outb"

// Run relays until ctx ends, backing off after failures and deleting sent
// messages past the retention every minute. It returns nil when ctx ends.
func (r *Relay) Run(ctx context.Context) error {
	if r.batch <= 0 || r.batch > 65534 {
		return fmt.Errorf("outbox: relay batch size %d: want 1 to 65534: %w", r.batch, ferry.ErrInvalidArgument)
	}
	failures := 0
	lastCleanup := time.Time{}
	for ctx.Err() == nil {
		if r.retention >= 0 && time.Since(lastCleanup) > time.Minute {
			if _, err := r.Cleanup(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("outbox: cleanup failed", "err", err)
			}
			lastCleanup = time.Now()
		}
		n, err := r.RelayOnce(ctx)
		wait := r.poll
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			failures++
			wait = r.policy.Backoff(failures, r.rng)
			r.log.Warn("outbox: relay failed; backing off", "err", err, "failures", failures, "backoff", wait)
			if r.observe != nil {
				r.observe(RelayStats{Err: err, Failures: failures, Delay: wait})
			}
		case n == r.batch:
			failures = 0
			continue
		default:
			failures = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
	return nil
}

// RelayOnce publishes one batch in one transaction and returns how many
// messages it published. Messages whose key another relay holds are left
// to that relay.
func (r *Relay) RelayOnce(ctx context.Context) (int, error) {
	tx, err := r.o.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("outbox: relay: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	rows, err := tx.Query(ctx, r.candidates, r.batch)
	if err != nil {
		return 0, fmt.Errorf("outbox: relay: candidates: %w", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || len(keys) == 0 {
		return 0, wrapRelay("candidates", err)
	}
	// Try-locks never wait, so two relays cannot deadlock; each takes the
	// keys nobody holds. A key is published only under its lock, and the
	// claim below runs after the locks, so it sees every earlier commit.
	var locked []int32
	if err := tx.QueryRow(ctx, r.lock, keys, lockClass).Scan(&locked); err != nil {
		return 0, fmt.Errorf("outbox: relay: lock keys: %w", err)
	}
	if len(locked) == 0 {
		return 0, nil
	}
	msgs, seqs, oldest, err := r.claimRows(ctx, tx, locked)
	if err != nil || len(msgs) == 0 {
		return 0, err
	}
	if err := r.b.Publish(ctx, msgs...); err != nil {
		tx.Rollback(ctx) // release the rows before noting the failure on them
		r.recordFailure(ctx, seqs, err)
		return 0, fmt.Errorf("outbox: relay: publish %d messages: %w", len(msgs), err)
	}
	if r.afterPublish != nil {
		if err := r.afterPublish(); err != nil {
			return 0, err
		}
	}
	if _, err := tx.Exec(ctx, r.markSent, seqs); err != nil {
		return 0, fmt.Errorf("outbox: relay: mark sent: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("outbox: relay: commit: %w", err)
	}
	if r.observe != nil {
		r.observe(RelayStats{Published: len(msgs), Lag: time.Since(oldest)})
	}
	return len(msgs), nil
}

func (r *Relay) claimRows(ctx context.Context, tx pgx.Tx, locked []int32) ([]*ferry.Message, []int64, time.Time, error) {
	rows, err := tx.Query(ctx, r.claim, locked, r.batch)
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("outbox: relay: claim: %w", err)
	}
	defer rows.Close()
	var (
		msgs   []*ferry.Message
		seqs   []int64
		oldest time.Time
	)
	for rows.Next() {
		var (
			seq       int64
			m         = &ferry.Message{}
			part      *int32
			hk        []string
			hv        [][]byte
			notBefore *time.Time
			created   time.Time
		)
		if err := rows.Scan(&seq, &m.ID, &m.Topic, &m.Key, &part, &hk, &hv, &m.Payload, &notBefore, &created); err != nil {
			return nil, nil, time.Time{}, fmt.Errorf("outbox: relay: row: %w", err)
		}
		if len(hk) != len(hv) {
			return nil, nil, time.Time{}, fmt.Errorf("outbox: relay: row %d: %d header keys but %d values", seq, len(hk), len(hv))
		}
		if part != nil {
			m.Partition, m.PinPartition = *part, true
		}
		for i := range hk {
			m.Headers = append(m.Headers, ferry.Header{Key: hk[i], Value: hv[i]})
		}
		if notBefore != nil {
			m.NotBefore = *notBefore
		}
		if len(m.Key) == 0 {
			m.Key = nil
		}
		m.Time = created
		if oldest.IsZero() || created.Before(oldest) {
			oldest = created
		}
		msgs = append(msgs, m)
		seqs = append(seqs, seq)
	}
	return msgs, seqs, oldest, wrapRelay("claim", rows.Err())
}

// recordFailure notes the error on the rows for operators, outside the
// failed transaction (best effort).
func (r *Relay) recordFailure(ctx context.Context, seqs []int64, cause error) {
	if _, err := r.o.pool.Exec(ctx, r.markFailed, seqs, cause.Error()); err != nil && ctx.Err() == nil {
		r.log.Warn("outbox: could not record a relay failure", "err", err)
	}
}

// Cleanup deletes messages sent longer ago than the retention, up to
// 10,000 at a time, and returns how many it deleted.
func (r *Relay) Cleanup(ctx context.Context) (int64, error) {
	if r.retention < 0 {
		return 0, nil
	}
	tag, err := r.o.pool.Exec(ctx, r.cleanup, r.retention)
	if err != nil {
		return 0, fmt.Errorf("outbox: cleanup: %w", err)
	}
	return tag.RowsAffected(), nil
}

func wrapRelay(step string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("outbox: relay: %s: %w", step, err)
}
