package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/retry"
)

// DefaultPostgresDSN is the machine's PostgreSQL (trust authentication on
// loopback) with a pool large enough for 64 inserters and River's own
// connections.
const DefaultPostgresDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&pool_max_conns=80"

const riverSystem = "river (postgres)"

// The River scenario's shapes: riverInserters goroutines insert one job
// per call (as the publish scenario's 64 synchronous publishers do), and
// batchAppenders goroutines insert riverBatch jobs per InsertMany call;
// workers run riverWorkers jobs at a time (ferry's runtime, 64 lanes);
// a flaky job fails riverFlakyFailures times, riverRetryDelay apart,
// before it succeeds, and one job in riverFlakyEvery is flaky.
const (
	riverInserters     = 64
	riverBatch         = 1000
	riverWorkers       = 64
	riverFlakyEvery    = 100
	riverFlakyFailures = 2
	riverRetryDelay    = 10 * time.Millisecond
)

// benchJob is the River job of the bench: I numbers it, Flaky says it
// fails riverFlakyFailures times before it succeeds.
type benchJob struct {
	I     int  `json:"i"`
	Flaky bool `json:"flaky,omitempty"`
}

// Kind names the job kind.
func (benchJob) Kind() string { return "ferry_bench" }

// benchWorker is a no-op River worker, except for flaky jobs' first
// attempts, which fail and are retried after riverRetryDelay.
type benchWorker struct {
	river.WorkerDefaults[benchJob]
}

var errFlaky = errors.New("bench: a flaky job's planned failure")

// Work does nothing, or fails a flaky job's first attempts.
func (benchWorker) Work(_ context.Context, job *river.Job[benchJob]) error {
	if job.Args.Flaky && job.Attempt <= riverFlakyFailures {
		return errFlaky
	}
	return nil
}

// NextRetry retries after riverRetryDelay, as ferry's handler asks with
// ferry.RetryAfter.
func (benchWorker) NextRetry(*river.Job[benchJob]) time.Time { return time.Now().Add(riverRetryDelay) }

// riverEnv is the River side of a run: a pool of the machine's Postgres
// and a fresh schema with River's migrations applied.
type riverEnv struct {
	pool     *pgxpool.Pool
	schema   string
	workers  *river.Workers
	fsyncAck bool
	settings string
	logger   *slog.Logger
}

func openRiver(ctx context.Context, dsn string) (*riverEnv, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, unavailable(riverSystem, fmt.Errorf("postgres pool: %w", err))
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, unavailable(riverSystem, fmt.Errorf("postgres: %w", err))
	}
	var version, syncCommit, fsync, dataDir string
	if err := pool.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('synchronous_commit'), current_setting('fsync'), current_setting('data_directory')").
		Scan(&version, &syncCommit, &fsync, &dataDir); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres settings: %w", err)
	}
	e := &riverEnv{pool: pool, schema: fmt.Sprintf("ferry_bench_%d", time.Now().UnixNano()), workers: river.NewWorkers(),
		logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	// synchronous_commit off, or fsync off, acknowledges a commit before
	// its WAL is on disk; local, remote_write, on and remote_apply flush
	// the local WAL first.
	e.fsyncAck = syncCommit != "off" && fsync == "on"
	e.settings = fmt.Sprintf("PostgreSQL %s (data directory %s), synchronous_commit=%s, fsync=%s", version, dataDir, syncCommit, fsync)
	river.AddWorker(e.workers, &benchWorker{})
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{e.schema}.Sanitize()); err != nil {
		pool.Close()
		return nil, fmt.Errorf("creating schema %s: %w", e.schema, err)
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: e.schema, Logger: e.logger})
	if err == nil {
		_, err = m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	}
	if err != nil {
		e.close(ctx)
		return nil, fmt.Errorf("river migrations into %s: %w", e.schema, err)
	}
	return e, nil
}

// close drops the run's schema and closes the pool.
func (e *riverEnv) close(ctx context.Context) {
	if _, err := e.pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+pgx.Identifier{e.schema}.Sanitize()+" CASCADE"); err != nil {
		slog.Warn("bench: dropping the River schema", "schema", e.schema, "err", err)
	}
	e.pool.Close()
}

// client is a River client of the run's schema working queues (none: an
// insert-only client).
func (e *riverEnv) client(queues map[string]river.QueueConfig) (*river.Client[pgx.Tx], error) {
	cfg := &river.Config{Schema: e.schema, Workers: e.workers, Queues: queues, Logger: e.logger, MaxAttempts: 5}
	if len(queues) > 0 {
		// The default cooldown (100 ms) lets a producer fetch at most
		// riverWorkers jobs per 100 ms; 1 ms is River's minimum.
		cfg.FetchCooldown = time.Millisecond
	}
	cl, err := river.NewClient(riverpgxv5.New(e.pool), cfg)
	if err != nil {
		return nil, fmt.Errorf("river client: %w", err)
	}
	return cl, nil
}

// riverScenario runs River on the machine's Postgres beside ferry on the
// bench disk: inserts (one per call from riverInserters goroutines, and
// InsertMany batches) against ferry's appends of the same shapes, the
// throughput of a no-op job against the runtime's no-op handler, and a
// run where one job in riverFlakyEvery fails twice before it succeeds.
func (p *peerRun) riverScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	e, err := openRiver(ctx, p.postgresDSN)
	if err != nil {
		return nil, err
	}
	defer e.close(ctx)
	ins, err := e.client(nil)
	if err != nil {
		return nil, err
	}
	ref, out, err := p.reference(ctx, dir, s)
	if err != nil {
		return out, err
	}
	fsync := yesNo(e.fsyncAck)

	// Inserts, one per call.
	l, err := openLog(ctx, filepath.Join(dir, "ferry-river-insert"), "bench")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	payload := make([]byte, payloadSize)
	settle()
	cnt, el, lat, err := drive(ctx, riverInserters, s.publishFor, func(ctx context.Context, w, _ int) error {
		return l.Append(ctx, &ferry.Message{Topic: "bench", Key: []byte(strconv.Itoa(w)), Payload: payload})
	})
	if err != nil {
		return nil, fmt.Errorf("ferry: append: %w", err)
	}
	ferryOne := Result{Scenario: "river-insert", System: "ferry Append, one message per call", FsyncAck: "yes", Concurrency: riverInserters, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
		Note: "256-byte messages on the bench disk"}
	ferryOne.percentiles(lat)
	out = append(out, ferryOne)
	settle()
	var seq atomic.Int64
	cnt, el, lat, err = drive(ctx, riverInserters, s.publishFor, func(ctx context.Context, _, _ int) error {
		_, err := ins.Insert(ctx, benchJob{I: int(seq.Add(1))}, &river.InsertOpts{Queue: "insert"})
		return err
	})
	if err != nil {
		return out, fmt.Errorf("river: insert: %w", err)
	}
	riverOne := Result{Scenario: "river-insert", System: "river Insert, one job per call", FsyncAck: fsync, Concurrency: riverInserters, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
		Note: e.settings + ", fresh schema " + e.schema}
	riverOne.percentiles(lat)
	compare(&riverOne, ferryOne)
	out = append(out, riverOne)

	// Inserts at a fixed offered rate, each job its own transaction.
	ackLat, err := pacedLatency(ctx, s, "river Insert", fsync, func(_ int, done func(error)) {
		go func() {
			_, err := ins.Insert(ctx, benchJob{I: int(seq.Add(1))}, &river.InsertOpts{Queue: "insert"})
			done(err)
		}()
	})
	if err != nil {
		return out, fmt.Errorf("river: latency: %w", err)
	}
	compareLatency(&ackLat, ref.latency)
	out = append(out, ackLat)

	// Inserts in batches.
	settle()
	cnt, el, lat, err = drivePipelined(ctx, batchAppenders, riverBatch, s.publishFor, func(ctx context.Context, w int) error {
		msgs := make([]*ferry.Message, riverBatch)
		for i := range msgs {
			msgs[i] = &ferry.Message{Topic: "bench", Key: []byte(strconv.Itoa(w)), Payload: payload}
		}
		return l.Append(ctx, msgs...)
	})
	if err != nil {
		return out, fmt.Errorf("ferry: batched append: %w", err)
	}
	ferryMany := Result{Scenario: "river-insert", System: fmt.Sprintf("ferry Append, %d messages per call", riverBatch), FsyncAck: "yes", Concurrency: batchAppenders, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el)}
	ferryMany.percentiles(lat)
	out = append(out, ferryMany)
	settle()
	cnt, el, lat, err = drivePipelined(ctx, batchAppenders, riverBatch, s.publishFor, func(ctx context.Context, _ int) error {
		params := make([]river.InsertManyParams, riverBatch)
		for i := range params {
			params[i] = river.InsertManyParams{Args: benchJob{I: int(seq.Add(1))}, InsertOpts: &river.InsertOpts{Queue: "insert"}}
		}
		_, err := ins.InsertMany(ctx, params)
		return err
	})
	if err != nil {
		return out, fmt.Errorf("river: InsertMany: %w", err)
	}
	riverMany := Result{Scenario: "river-insert", System: fmt.Sprintf("river InsertMany, %d jobs per call", riverBatch), FsyncAck: fsync, Concurrency: batchAppenders, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el)}
	riverMany.percentiles(lat)
	compare(&riverMany, ferryMany)
	out = append(out, riverMany)

	// Work: a no-op, then a flaky one job in riverFlakyEvery.
	for _, flaky := range []bool{false, true} {
		scenario, what := "river-work", "no-op"
		if flaky {
			scenario, what = "river-retry", fmt.Sprintf("1 in %d fails %d times, retried after %v", riverFlakyEvery, riverFlakyFailures, riverRetryDelay)
		}
		settle()
		fr, err := ferryWork(ctx, filepath.Join(dir, scenario), s.riverJobs, flaky)
		if err != nil {
			return out, fmt.Errorf("ferry: %s: %w", scenario, err)
		}
		fr.Scenario, fr.System = scenario, "ferry runtime, "+what
		out = append(out, fr)
		settle()
		rr, err := e.work(ctx, scenario, s.riverJobs, flaky)
		if err != nil {
			return out, fmt.Errorf("river: %s: %w", scenario, err)
		}
		rr.Scenario, rr.System = scenario, "river workers, "+what
		compare(&rr, fr)
		out = append(out, rr)
	}
	return out, nil
}

// work inserts n jobs into queue (InsertManyFast, before the clock
// starts), then starts a client working that queue with riverWorkers
// workers and returns the time from its start to the n-th job completed
// (River's completed event: the job's row is marked completed).
func (e *riverEnv) work(ctx context.Context, queue string, n int, flaky bool) (Result, error) {
	ins, err := e.client(nil)
	if err != nil {
		return Result{}, err
	}
	for done := 0; done < n; {
		params := make([]river.InsertManyParams, min(10_000, n-done))
		for i := range params {
			params[i] = river.InsertManyParams{Args: benchJob{I: done + i, Flaky: flaky && (done+i)%riverFlakyEvery == 0}, InsertOpts: &river.InsertOpts{Queue: queue}}
		}
		if _, err := ins.InsertManyFast(ctx, params); err != nil {
			return Result{}, fmt.Errorf("InsertManyFast: %w", err)
		}
		done += len(params)
	}
	cl, err := e.client(map[string]river.QueueConfig{queue: {MaxWorkers: riverWorkers}})
	if err != nil {
		return Result{}, err
	}
	events, unsubscribe := cl.SubscribeConfig(&river.SubscribeConfig{Kinds: []river.EventKind{river.EventKindJobCompleted}, ChanSize: n + 1000})
	defer unsubscribe()
	settle()
	start := time.Now()
	if err := cl.Start(ctx); err != nil {
		return Result{}, fmt.Errorf("starting the client: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := cl.Stop(sctx); err != nil {
			slog.Warn("bench: stopping the River client", "err", err)
		}
	}()
	timeout := time.After(10 * time.Minute)
	for got := 0; got < n; {
		select {
		case ev, ok := <-events:
			if !ok {
				return Result{}, fmt.Errorf("subscription closed after %d of %d jobs", got, n)
			}
			if ev.Kind == river.EventKindJobCompleted {
				got++
			}
		case <-timeout:
			return Result{}, fmt.Errorf("%d of %d jobs completed in 10 minutes", got, n)
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
	}
	el := time.Since(start)
	return Result{Concurrency: riverWorkers, Messages: n, Seconds: el.Seconds(), MsgsPerSec: rate(n, el), FsyncAck: yesNo(e.fsyncAck),
		Note: fmt.Sprintf("%d jobs inserted beforehand; %d workers, FetchCooldown 1 ms (River's minimum; the default 100 ms bounds a queue at %d jobs per 100 ms), from Start to the n-th completed event", n, riverWorkers, riverWorkers)}, nil
}

// ferryWork appends n messages (each numbered in its payload) to a
// durable log in dir, then runs the runtime over them with a no-op
// handler at concurrency 64 and returns the time to the n-th success. If
// flaky, one message in riverFlakyEvery fails riverFlakyFailures times
// first, each failure asking for a retry after riverRetryDelay.
func ferryWork(ctx context.Context, dir string, n int, flaky bool) (Result, error) {
	l, err := openLog(ctx, dir, "in")
	if err != nil {
		return Result{}, err
	}
	defer l.Close()
	msgs := make([]*ferry.Message, 0, 1000)
	for i := range n {
		p := make([]byte, payloadSize)
		binary.LittleEndian.PutUint64(p, uint64(i))
		msgs = append(msgs, &ferry.Message{Topic: "in", Key: []byte(strconv.Itoa(i % 10_000)), Payload: p})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := l.Append(ctx, msgs...); err != nil {
				return Result{}, err
			}
			msgs = msgs[:0]
		}
	}
	b := embedded.New(l)
	defer b.Close()
	var mu sync.Mutex
	failures := map[uint64]int{}
	var handled atomic.Int64
	all := make(chan struct{})
	c, err := consumer.New(b, "bench", []string{"in"}, func(_ context.Context, m *ferry.Message) error {
		i := binary.LittleEndian.Uint64(m.Payload)
		if flaky && i%riverFlakyEvery == 0 {
			mu.Lock()
			f := failures[i]
			if f < riverFlakyFailures {
				failures[i] = f + 1
			}
			mu.Unlock()
			if f < riverFlakyFailures {
				return ferry.RetryAfter(errFlaky, riverRetryDelay)
			}
		}
		if handled.Add(1) == int64(n) {
			close(all)
		}
		return nil
	}, consumer.WithConcurrency(64), consumer.WithMaxBuffered(8192), consumer.WithCommitInterval(100*time.Millisecond),
		consumer.WithRetryPolicy(retry.Policy{MaxAttempts: 5, InitialBackoff: riverRetryDelay}))
	if err != nil {
		return Result{}, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	settle()
	start := time.Now()
	go func() { done <- c.Run(rctx) }()
	select {
	case <-all:
	case err := <-done:
		return Result{}, fmt.Errorf("consumer ended early: %w", err)
	case <-time.After(10 * time.Minute):
		return Result{}, fmt.Errorf("handled %d of %d in 10 minutes", handled.Load(), n)
	}
	el := time.Since(start)
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		return Result{}, fmt.Errorf("consumer: %w", err)
	}
	return Result{Concurrency: 64, Messages: n, Seconds: el.Seconds(), MsgsPerSec: rate(n, el),
		Note: fmt.Sprintf("%d messages appended beforehand to a durable log on the bench disk; 64 lanes over 10k keys, offsets committed every 100 ms", n)}, nil
}
