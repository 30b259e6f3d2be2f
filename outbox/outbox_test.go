package outbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/memlog"
	"github.com/ferrymq/ferry/internal/testsvc"
)

const topic = "orders"

// setup returns a migrated schema of its own and an embedded backend on
// the in-memory FS with the topic created.
func setup(t *testing.T) (*pgxpool.Pool, *Outbox, *embedded.Backend) {
	t.Helper()
	pool, _ := testsvc.Postgres(t)
	if err := Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	b, _ := memlog.Backend(t, commitlog.WithDurability(commitlog.DurabilityNone))
	if err := b.EnsureTopic(context.Background(), topic, 4); err != nil {
		t.Fatal(err)
	}
	return pool, New(pool), b
}

// addInTx adds msgs in one committed transaction.
func addInTx(t testing.TB, pool *pgxpool.Pool, o *Outbox, msgs ...*ferry.Message) {
	t.Helper()
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) error { return o.Add(context.Background(), tx, msgs...) })
	if err != nil {
		t.Fatal(err)
	}
}

func seqMsg(key string, seq int) *ferry.Message {
	return &ferry.Message{Topic: topic, Key: []byte(key), Payload: fmt.Appendf(nil, "%s:%d", key, seq)}
}

// readTopic returns everything in the topic, per partition in offset order.
func readTopic(t testing.TB, l *commitlog.Log) []*ferry.Message {
	t.Helper()
	info, err := l.Topic(topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []*ferry.Message
	for p := range info.Partitions {
		_, end, _ := l.Bounds(topic, int32(p))
		for off := uint64(0); off < end; {
			res, err := l.Read(topic, int32(p), off, commitlog.ReadOpts{})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, res.Messages...)
			off = res.Next
		}
	}
	return out
}

// checkPerKey proves the topic holds key:0..n-1 for each key exactly once,
// in order.
func checkPerKey(t testing.TB, msgs []*ferry.Message, keys []string, n int) {
	t.Helper()
	next := map[string]int{}
	for _, m := range msgs {
		k, seq, _ := strings.Cut(string(m.Payload), ":")
		var s int
		fmt.Sscan(seq, &s)
		if s != next[k] {
			t.Fatalf("key %s: got sequence %d at offset %d, want %d (lost, duplicated or reordered)", k, s, m.Offset, next[k])
		}
		next[k]++
	}
	for _, k := range keys {
		if next[k] != n {
			t.Fatalf("key %s: %d messages published, want %d", k, next[k], n)
		}
	}
}

func pending(t testing.TB, o *Outbox) int64 {
	t.Helper()
	n, _, err := o.Pending(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- Migrate(ctx, pool) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM ferry_migrations").Scan(&n); err != nil || n != len(Migrations()) {
		t.Fatalf("migrations recorded: %d (%v), want %d", n, err, len(Migrations()))
	}
}

func TestMigrateIntoNamedSchema(t *testing.T) {
	pool, schema := testsvc.Postgres(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA "`+schema+`_Other"`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pool.Exec(context.Background(), `DROP SCHEMA "`+schema+`_Other" CASCADE`) })
	other := schema + "_Other"
	if err := Migrate(ctx, pool, WithSchema(other)); err != nil {
		t.Fatal(err)
	}
	o := New(pool, WithSchema(other))
	addInTx(t, pool, o, seqMsg("k", 0))
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM "`+other+`".ferry_outbox`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in the named schema: %d (%v)", n, err)
	}
}

func TestRolledBackTransactionPublishesNothing(t *testing.T) {
	pool, o, b := setup(t)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := o.Add(ctx, tx, seqMsg("k", 0), seqMsg("k", 1)); err != nil {
			return err
		}
		return errors.New("business rule refused the order")
	})
	if err == nil {
		t.Fatal("transaction should have failed")
	}
	n, err := o.NewRelay(b).RelayOnce(ctx)
	if err != nil || n != 0 {
		t.Fatalf("relay published %d (%v) from a rolled-back transaction", n, err)
	}
	if got := readTopic(t, b.Log()); len(got) != 0 {
		t.Fatalf("%d messages reached the topic", len(got))
	}
}

func TestAddRejectsMessageWithoutTopic(t *testing.T) {
	pool, o, _ := setup(t)
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return o.Add(ctx, tx, seqMsg("k", 0), &ferry.Message{Payload: []byte("x")})
	})
	if !errors.Is(err, ferry.ErrInvalidArgument) || !strings.Contains(err.Error(), "message 1 has no topic") {
		t.Fatalf("err = %v", err)
	}
	if n := pending(t, o); n != 0 {
		t.Fatalf("%d rows written by a refused Add", n)
	}
}

// Everything the relay publishes arrives intact: key, headers, pinned
// partition, time, ID; and the rows are marked sent.
func TestRelayPublishesMessagesIntact(t *testing.T) {
	pool, o, b := setup(t)
	ctx := context.Background()
	m := seqMsg("k", 0)
	m.Headers = []ferry.Header{{Key: ferry.HeaderType, Value: []byte("order.placed")}, {Key: "empty", Value: []byte{}}}
	pinned := &ferry.Message{Topic: topic, Partition: 3, PinPartition: true, Payload: []byte("pinned")}
	addInTx(t, pool, o, m, pinned)
	if n, err := o.NewRelay(b).RelayOnce(ctx); err != nil || n != 2 {
		t.Fatalf("relayed %d, %v", n, err)
	}
	got := readTopic(t, b.Log())
	if len(got) != 2 {
		t.Fatalf("%d messages in the topic", len(got))
	}
	byID := map[ferry.ID]*ferry.Message{}
	for _, g := range got {
		byID[g.ID] = g
	}
	g := byID[m.ID]
	if g == nil || string(g.Key) != "k" || string(g.Payload) != "k:0" || len(g.Headers) != 2 ||
		string(g.Headers[0].Value) != "order.placed" || g.Headers[1].Key != "empty" || g.Time.IsZero() {
		t.Fatalf("message changed on the way: %+v", g)
	}
	if p := byID[pinned.ID]; p == nil || p.Partition != 3 {
		t.Fatalf("pinned message: %+v", p)
	}
	if n := pending(t, o); n != 0 {
		t.Fatalf("%d rows still pending", n)
	}
}

// A relay that fails between publishing and marking sent publishes the
// same IDs again; the log's producer deduplication drops them, so the
// topic holds each message once, in order.
func TestRelayRetryAfterPublishIsDeduplicated(t *testing.T) {
	t.Run("fresh rows", func(t *testing.T) { relayRetryDeduplicated(t, 0) })
	// A backlog built up during an outage carries its rows' creation time,
	// far older than the log's two-minute dedup window: the window counts
	// from the append, so the retries are still dropped.
	t.Run("rows created an hour ago", func(t *testing.T) { relayRetryDeduplicated(t, time.Hour) })
}

func relayRetryDeduplicated(t *testing.T, age time.Duration) {
	pool, o, b := setup(t)
	ctx := context.Background()
	for i := range 50 {
		addInTx(t, pool, o, seqMsg("a", i), seqMsg("b", i))
	}
	if age > 0 {
		if _, err := pool.Exec(ctx, "UPDATE ferry_outbox SET created_at = created_at - $1::interval", fmt.Sprintf("%d seconds", int(age.Seconds()))); err != nil {
			t.Fatal(err)
		}
	}
	r := o.NewRelay(b, WithBatchSize(30))
	calls := 0
	r.afterPublish = func() error {
		calls++
		if calls%2 == 1 {
			return errors.New("relay died before marking sent")
		}
		return nil
	}
	for pending(t, o) > 0 {
		r.RelayOnce(ctx)
	}
	checkPerKey(t, readTopic(t, b.Log()), []string{"a", "b"}, 50)
}

// flaky fails Publish while down is set.
type flaky struct {
	backend.Backend
	down atomic.Bool
}

func (f *flaky) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	if f.down.Load() {
		return errors.New("connection refused")
	}
	return f.Backend.Publish(ctx, msgs...)
}

// While the backend is down the relay backs off, reports the errors and
// notes them on the rows; when it returns everything is published.
func TestRelayBacksOffWhileBackendIsDown(t *testing.T) {
	pool, o, b := setup(t)
	f := &flaky{Backend: b}
	f.down.Store(true)
	for i := range 10 {
		addInTx(t, pool, o, seqMsg("k", i))
	}
	var mu sync.Mutex
	var stats []RelayStats
	r := o.NewRelay(f, WithPollInterval(5*time.Millisecond), WithObserver(func(s RelayStats) {
		mu.Lock()
		stats = append(stats, s)
		if s.Failures == 3 {
			f.down.Store(false)
		}
		mu.Unlock()
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for pending(t, o) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkPerKey(t, readTopic(t, b.Log()), []string{"k"}, 10)
	mu.Lock()
	defer mu.Unlock()
	if len(stats) < 4 || stats[0].Err == nil || stats[0].Delay <= 0 || stats[2].Failures != 3 || stats[len(stats)-1].Published == 0 {
		t.Fatalf("observer saw %+v", stats)
	}
	var attempts int
	var lastErr string
	if err := pool.QueryRow(context.Background(), "SELECT attempts, last_error FROM ferry_outbox ORDER BY seq LIMIT 1").Scan(&attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 4 || !strings.Contains(lastErr, "connection refused") {
		t.Fatalf("row records attempts=%d last_error=%q", attempts, lastErr)
	}
}

// Two relays at once, each failing now and then after publishing, never
// publish a key out of order and lose nothing. Writers add each key's
// messages one transaction after another, so each key's order is defined.
func TestConcurrentRelaysKeepPerKeyOrder(t *testing.T) {
	pool, o, b := setup(t)
	const keys, perKey = 24, 60
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var names []string
	for k := range keys {
		names = append(names, fmt.Sprintf("customer-%02d", k))
	}
	var writers sync.WaitGroup
	for w := range 4 {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			next := make([]int, keys)
			for {
				var mine []int
				for k := w; k < keys; k += 4 {
					if next[k] < perKey {
						mine = append(mine, k)
					}
				}
				if len(mine) == 0 {
					return
				}
				var batch []*ferry.Message
				for range 1 + rng.IntN(4) {
					k := mine[rng.IntN(len(mine))]
					if next[k] < perKey {
						batch = append(batch, seqMsg(names[k], next[k]))
						next[k]++
					}
				}
				addInTx(t, pool, o, batch...)
			}
		})
	}
	var relays sync.WaitGroup
	for i := range 2 {
		r := o.NewRelay(b, WithBatchSize(7+6*i), WithPollInterval(time.Millisecond))
		rng := rand.New(rand.NewPCG(uint64(i), 2))
		r.afterPublish = func() error {
			time.Sleep(time.Duration(rng.IntN(3)) * time.Millisecond)
			if rng.IntN(8) == 0 {
				return errors.New("relay died before marking sent")
			}
			return nil
		}
		relays.Go(func() { r.Run(ctx) })
	}
	writers.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for pending(t, o) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	relays.Wait()
	checkPerKey(t, readTopic(t, b.Log()), names, perKey)
}

func TestRetentionDeletesOnlyOldSentRows(t *testing.T) {
	pool, o, b := setup(t)
	ctx := context.Background()
	addInTx(t, pool, o, seqMsg("k", 0), seqMsg("k", 1))
	r := o.NewRelay(b, WithRetention(time.Hour))
	if _, err := r.RelayOnce(ctx); err != nil {
		t.Fatal(err)
	}
	addInTx(t, pool, o, seqMsg("k", 2))
	if _, err := pool.Exec(ctx, "UPDATE ferry_outbox SET sent_at = now() - interval '2 hours' WHERE id = (SELECT id FROM ferry_outbox ORDER BY seq LIMIT 1)"); err != nil {
		t.Fatal(err)
	}
	n, err := r.Cleanup(ctx)
	if err != nil || n != 1 {
		t.Fatalf("cleanup deleted %d (%v), want 1", n, err)
	}
	var left int
	pool.QueryRow(ctx, "SELECT count(*) FROM ferry_outbox").Scan(&left)
	if left != 2 || pending(t, o) != 1 {
		t.Fatalf("%d rows left, %d pending", left, pending(t, o))
	}
}

func TestRelayRejectsBadBatchSize(t *testing.T) {
	_, o, b := setup(t)
	err := o.NewRelay(b, WithBatchSize(70000)).Run(context.Background())
	if !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("err = %v", err)
	}
}
