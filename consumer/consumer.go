// Package consumer is ferry's processing runtime: it turns a backend's log
// into reliable work. A Consumer joins a group, takes the partitions it is
// assigned, and runs a handler over their messages with:
//
//   - per-key lanes: messages of one key are processed one at a time and in
//     order; different keys run in parallel up to the concurrency limit;
//   - commits at each partition's contiguous-completion watermark, so a
//     crash redelivers at most the uncommitted window;
//   - retries with full-jitter backoff (package retry), a per-attempt
//     timeout, and panics recovered as failures with their stack;
//   - a dead-letter topic per group for what retries cannot fix, each entry
//     the original message untouched plus why it failed;
//   - bounded buffers: a partition stops fetching when its buffered
//     messages reach the limit (backpressure all the way to fetch).
package consumer

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/retry"
)

// Handler processes one message. Returning nil marks it handled; an error
// is retried or dead-lettered according to the retry policy and the
// error's class (see ferry.Permanent, ferry.RetryAfter).
type Handler func(ctx context.Context, m *ferry.Message) error

// Middleware wraps a handler; the consumer's features compose this way
// and users can add their own.
type Middleware func(Handler) Handler

// EventKind names a step in a message's life.
type EventKind string

// Lifecycle events.
const (
	EventStarted      EventKind = "started"       // a handler attempt begins
	EventHandled      EventKind = "handled"       // the handler succeeded
	EventRetried      EventKind = "retried"       // an attempt failed; another follows after Delay
	EventDeadLettered EventKind = "dead-lettered" // written to the DLQ (Class "parked": parked behind an earlier dead letter of its key)
	EventAbandoned    EventKind = "abandoned"     // the partition was revoked or the consumer stopped mid-message; it will be redelivered
	EventScheduled    EventKind = "scheduled"     // a long retry went to the DLQ, due after Delay (WithDurableRetry)
	EventReleased     EventKind = "released"      // the redriven copy of a key's blocker arrived; the key is no longer parked
	EventRedriven     EventKind = "redriven"      // the consumer sent a DLQ entry back to its topic (a due scheduled retry, or a key catching up); Message is the original
)

// Event describes one step of one message. Events are delivered
// synchronously to the observer, in order per key.
type Event struct {
	Kind    EventKind
	Member  string
	Message *ferry.Message
	Attempt int
	Err     error
	Class   retry.Class
	Delay   time.Duration
	// Duration is how long the attempt took (EventHandled, EventRetried).
	Duration time.Duration
}

type cfg struct {
	member         string
	concurrency    int
	maxBuffered    int
	fetchMax       int
	policy         retry.Policy
	dlqTopic       string
	handlerName    string
	commitInterval time.Duration
	heartbeat      time.Duration
	observer       func(Event)
	middleware     []Middleware
	logger         *slog.Logger
	seed           uint64
	breaker        *BreakerSettings
	exactlyOnce    *idempotency.Log
	limiter        *rate.Limiter
	durableAfter   time.Duration
	start          Start
	maxParkedKeys  int
}

// Opt configures a Consumer.
type Opt interface{ apply(*cfg) }

type optFunc func(*cfg)

func (f optFunc) apply(c *cfg) { f(c) }

// WithMember names this consumer within its group (default: a random ID).
func WithMember(id string) Opt { return optFunc(func(c *cfg) { c.member = id }) }

// WithConcurrency bounds how many messages are processed at once across
// all partitions (default 16).
func WithConcurrency(n int) Opt { return optFunc(func(c *cfg) { c.concurrency = n }) }

// WithMaxBuffered bounds the unfinished messages each partition holds
// (default 1024). When full, fetching from it pauses. The messages held
// between a partition's commit watermark and its fetch position (finished
// ones waiting behind an unfinished one) are bounded at 64 times this.
func WithMaxBuffered(n int) Opt { return optFunc(func(c *cfg) { c.maxBuffered = n }) }

// WithMaxParkedKeys bounds the keys each partition holds parked behind a
// dead letter or a scheduled retry (default 10000; the parked messages
// themselves are in the DLQ, not in memory). At the bound, a message that
// would park one more key waits — off the handler pool, at the head of its
// key's lane, holding the partition's commit watermark — until a redrive
// releases a key; other keys flow meanwhile.
func WithMaxParkedKeys(n int) Opt { return optFunc(func(c *cfg) { c.maxParkedKeys = n }) }

// WithRetryPolicy sets the retry policy (default retry.DefaultPolicy).
func WithRetryPolicy(p retry.Policy) Opt { return optFunc(func(c *cfg) { c.policy = p }) }

// WithDLQTopic sets the dead-letter topic (default "<group>.dlq").
func WithDLQTopic(t string) Opt { return optFunc(func(c *cfg) { c.dlqTopic = t }) }

// Start says where a group begins reading a partition it has no
// committed offset for: StartEarliest (the default), StartLatest, or
// StartAt a time. Once the group committed an offset for the partition,
// it resumes there whatever Start says.
type Start struct {
	kind startKind
	at   time.Time
}

type startKind int

const (
	startEarliest startKind = iota
	startLatest
	startAt
)

var (
	// StartEarliest begins at the oldest message the partition holds.
	StartEarliest = Start{}
	// StartLatest begins after the last message the partition holds when
	// the group first reads it: only messages published later are handled.
	StartLatest = Start{kind: startLatest}
)

// StartAt begins at the first message appended at or after t.
func StartAt(t time.Time) Start { return Start{kind: startAt, at: t} }

// String names the start position.
func (s Start) String() string {
	switch s.kind {
	case startLatest:
		return "latest"
	case startAt:
		return "at " + s.at.Format(time.RFC3339Nano)
	}
	return "earliest"
}

// WithStart sets where the group begins a partition it has no committed
// offset for (default StartEarliest). The position chosen is committed
// with the group's first commit of the partition, so a restart before any
// message was handled resumes there instead of choosing again.
func WithStart(s Start) Opt { return optFunc(func(c *cfg) { c.start = s }) }

// WithHandlerName names the handler in dead letters and logs (default:
// the group's name).
func WithHandlerName(n string) Opt { return optFunc(func(c *cfg) { c.handlerName = n }) }

// WithCommitInterval sets how often offsets are committed (default 1s; they
// are also committed when partitions are revoked and on shutdown).
func WithCommitInterval(d time.Duration) Opt { return optFunc(func(c *cfg) { c.commitInterval = d }) }

// WithHeartbeatInterval sets how often the group session is renewed
// (default 1s; keep it well below the backend's session timeout).
func WithHeartbeatInterval(d time.Duration) Opt { return optFunc(func(c *cfg) { c.heartbeat = d }) }

// WithObserver receives every lifecycle event synchronously. It must be
// quick.
func WithObserver(fn func(Event)) Opt { return optFunc(func(c *cfg) { c.observer = fn }) }

// WithMiddleware wraps the handler; the first middleware is the outermost.
func WithMiddleware(m ...Middleware) Opt {
	return optFunc(func(c *cfg) { c.middleware = append(c.middleware, m...) })
}

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) Opt { return optFunc(func(c *cfg) { c.logger = l }) }

// WithRateLimit bounds handler calls to r per second with bursts of burst,
// across all partitions of this consumer (retries included).
func WithRateLimit(r float64, burst int) Opt {
	return optFunc(func(c *cfg) { c.limiter = rate.NewLimiter(rate.Limit(r), burst) })
}

// WithSeed makes the retry jitter deterministic (tests).
func WithSeed(s uint64) Opt { return optFunc(func(c *cfg) { c.seed = s }) }

// maxPending bounds the entries between a partition's watermark and its
// fetch position.
func (c *cfg) maxPending() int { return 64 * c.maxBuffered }

func (c *cfg) validate() error {
	switch {
	case c.concurrency < 1 || c.concurrency > 1<<16:
		return fmt.Errorf("%w: concurrency %d: want 1 to 65536", ferry.ErrInvalidArgument, c.concurrency)
	case c.maxBuffered < 1 || c.maxBuffered > 1<<20:
		return fmt.Errorf("%w: max buffered %d: want 1 to 1048576", ferry.ErrInvalidArgument, c.maxBuffered)
	case c.commitInterval <= 0 || c.heartbeat <= 0:
		return fmt.Errorf("%w: commit and heartbeat intervals must be positive", ferry.ErrInvalidArgument)
	case c.maxParkedKeys < 1:
		return fmt.Errorf("%w: max parked keys %d: want at least 1", ferry.ErrInvalidArgument, c.maxParkedKeys)
	case c.durableAfter < 0:
		return fmt.Errorf("%w: durable retry threshold %v: want 0 (off) or a positive delay", ferry.ErrInvalidArgument, c.durableAfter)
	}
	if err := c.policy.Validate(); err != nil {
		return err
	}
	if b := c.breaker; b != nil {
		if b.ConsecutiveFailures == 0 {
			b.ConsecutiveFailures = uint32(min(5, c.policy.MaxAttempts))
		}
		if int(b.ConsecutiveFailures) > c.policy.MaxAttempts {
			return fmt.Errorf("%w: the circuit breaker opens after %d consecutive failures, but a message is dead-lettered after %d attempts: during an outage messages would reach the DLQ before the breaker opens; want ConsecutiveFailures at most MaxAttempts (0 takes min(5, MaxAttempts))", ferry.ErrInvalidArgument, b.ConsecutiveFailures, c.policy.MaxAttempts)
		}
	}
	return nil
}

// Consumer runs a handler over a group's share of some topics.
type Consumer struct {
	b       backend.Backend
	group   string
	topics  []string
	handler Handler
	cfg     cfg
	work    chan laneJob // handed to the pool of concurrency goroutines (the bulkhead)
	busy    atomic.Int64 // pool goroutines running a lane

	breaker *breaker // nil without WithCircuitBreaker

	index *dlq.Index // the group's DLQ, followed by followDLQ (settle.go)

	running  atomic.Bool  // Run is running
	lastBeat atomic.Int64 // unix nanoseconds of the last successful heartbeat

	ready     chan struct{} // closed by Run once the first assignment's workers started
	readyOnce sync.Once

	mu      sync.Mutex
	workers map[backend.TopicPartition]*worker
	last    Stats // what Stats reports once Run has returned: its figures as it stopped
}

// Group returns the consumer group the consumer is a member of.
func (c *Consumer) Group() string { return c.group }

// Member returns the consumer's member name within its group.
func (c *Consumer) Member() string { return c.cfg.member }

// DLQTopic returns the topic the consumer dead-letters to.
func (c *Consumer) DLQTopic() string { return c.cfg.dlqTopic }

// Ready is closed once Run has joined the group and started a worker for
// every partition of its first assignment (none, if it got none): a
// message published after it is handled without waiting for a rebalance.
// Callers and tests wait on it instead of sleeping.
func (c *Consumer) Ready() <-chan struct{} { return c.ready }

// Stats is a snapshot of what a consumer holds.
type Stats struct {
	Partitions int    // partitions assigned
	Buffered   int    // messages fetched and not yet finished
	InFlight   int    // handler calls running or waiting to retry
	Waiting    int    // messages waiting behind their key's message in flight
	Pending    int    // messages between the commit watermark and the fetch position
	Keys       int    // keys with a message in flight
	Breaker    string // "closed", "open", "half-open", or "" without a breaker
	ParkedKeys int    // keys waiting behind a dead letter for a redrive
	// ParkedMessages counts the messages in the DLQ behind parked keys.
	ParkedMessages int
}

// Stats returns a snapshot of the consumer's buffers.
//
// While Run runs the figures are live; once it returned, Stats keeps
// reporting the parked keys and messages as they were when it stopped
// (the other counts are then zero).
func (c *Consumer) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.workers) == 0 && !c.running.Load() {
		st := c.last
		if c.breaker != nil {
			st.Breaker = c.breaker.State()
		}
		return st
	}
	st := Stats{Partitions: len(c.workers), InFlight: int(c.busy.Load())}
	if c.breaker != nil {
		st.Breaker = c.breaker.State()
	}
	for _, w := range c.workers {
		w.mu.Lock()
		st.Buffered += w.buffered
		st.Pending += len(w.pending)
		st.Keys += len(w.lanes)
		keys, entries := c.index.Parked(w.pk())
		st.ParkedKeys += keys
		st.ParkedMessages += entries - keys
		for _, l := range w.lanes {
			st.Waiting += len(l.waiting)
		}
		w.mu.Unlock()
	}
	return st
}

func (c *Consumer) setWorker(tp backend.TopicPartition, w *worker) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if w == nil {
		delete(c.workers, tp)
	} else {
		c.workers[tp] = w
	}
}

// New returns a consumer of topics as a member of group. Run starts it.
func New(b backend.Backend, group string, topics []string, h Handler, opts ...Opt) (*Consumer, error) {
	c := cfg{
		member:         ferry.NewID().String(),
		concurrency:    16,
		maxBuffered:    1024,
		fetchMax:       256,
		policy:         retry.DefaultPolicy,
		dlqTopic:       group + ".dlq",
		handlerName:    group,
		commitInterval: time.Second,
		heartbeat:      time.Second,
		logger:         slog.New(slog.DiscardHandler),
		seed:           rand.Uint64(),
		durableAfter:   time.Minute,
		maxParkedKeys:  10000,
	}
	for _, o := range opts {
		o.apply(&c)
	}
	c.policy = c.policy.WithDefaults()
	if c.breaker != nil {
		// The option's settings are shared by every consumer made with it;
		// validate fills in this one's threshold.
		bs := *c.breaker
		c.breaker = &bs
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if _, ok := b.(backend.Transactional); c.exactlyOnce != nil && !ok {
		return nil, fmt.Errorf("%w: exactly-once needs a backend that can publish and commit atomically", ferry.ErrInvalidArgument)
	}
	if group == "" || len(topics) == 0 || h == nil {
		return nil, fmt.Errorf("%w: a consumer needs a group, topics and a handler", ferry.ErrInvalidArgument)
	}
	for i := len(c.middleware) - 1; i >= 0; i-- {
		h = c.middleware[i](h)
	}
	cons := &Consumer{b: b, group: group, topics: topics, handler: h, cfg: c, work: make(chan laneJob), workers: map[backend.TopicPartition]*worker{}, index: dlq.NewIndex(b, c.dlqTopic), ready: make(chan struct{})}
	if c.breaker != nil {
		cons.breaker = newBreaker(c.handlerName, c.breaker, func(from, to string) {
			c.logger.Warn("circuit breaker changed state", "handler", c.handlerName, "from", from, "to", to)
		})
	}
	return cons, nil
}

func (c *Consumer) emit(e Event) {
	if c.cfg.observer != nil {
		e.Member = c.cfg.member
		c.cfg.observer(e)
	}
}

// Run consumes until ctx ends, then drains: in-flight messages finish (or
// are abandoned if their handler honours ctx) and offsets are committed.
// It returns nil after a clean stop, or the error that ended it
// (backend.ErrSessionExpired if the group dropped this member).
func (c *Consumer) Run(ctx context.Context) error { return c.run(ctx, false) }

// RunUntilCaughtUp is Run that returns nil, after committing, once every
// partition of the member's assignment has finished each message that was
// in it when the partition started (handled, or dead-lettered), with no
// settle job or redriven entry left to run. Messages published later may
// or may not be handled; a scheduled retry that is not due stays in the
// DLQ. It is for batch jobs and tests with one member: a rebalance
// starts the partitions it brings from their own ends.
func (c *Consumer) RunUntilCaughtUp(ctx context.Context) error { return c.run(ctx, true) }

func (c *Consumer) run(ctx context.Context, untilCaughtUp bool) error {
	if err := c.b.EnsureTopic(ctx, c.cfg.dlqTopic, 1); err != nil {
		return fmt.Errorf("consumer: dead-letter topic %q: %w", c.cfg.dlqTopic, err)
	}
	if n, err := c.b.Partitions(ctx, c.cfg.dlqTopic); err != nil {
		return fmt.Errorf("consumer: dead-letter topic %q: %w", c.cfg.dlqTopic, err)
	} else if n != 1 {
		// A key's dead letters and the markers that change them must be
		// read in one order: the runtime keeps its DLQ in one partition.
		return fmt.Errorf("%w: dead-letter topic %q has %d partitions; the runtime needs it to have 1 (its entries and their state markers are read in one order): delete it or choose another with WithDLQTopic", ferry.ErrInvalidArgument, c.cfg.dlqTopic, n)
	}
	s, err := c.b.Join(ctx, c.group, c.cfg.member, c.topics)
	if err != nil {
		return fmt.Errorf("consumer: join group %q: %w", c.group, err)
	}
	defer s.Leave()
	c.lastBeat.Store(time.Now().UnixNano())
	c.running.Store(true)
	defer c.running.Store(false)
	pool := c.startPool()
	defer pool()
	fctx, stopFollow := context.WithCancel(ctx)
	followDone := make(chan struct{})
	go func() { defer close(followDone); c.followDLQ(fctx) }()
	defer func() { stopFollow(); <-followDone }()
	workers := map[backend.TopicPartition]*worker{}
	// Revoked partitions stop on their own goroutines, so that a slow
	// handler never holds up heartbeats (the session would expire and the
	// member's other partitions move while their workers run). Each is
	// released once its worker stopped, or run again if it came back
	// meanwhile.
	stopping := map[backend.TopicPartition]bool{}
	stopped := make(chan backend.TopicPartition)
	want := map[backend.TopicPartition]bool{}
	stopAll := func() {
		st := c.Stats()
		defer func() {
			c.mu.Lock()
			c.last = Stats{ParkedKeys: st.ParkedKeys, ParkedMessages: st.ParkedMessages}
			c.mu.Unlock()
		}()
		// Each partition is released as soon as its worker stopped: a
		// revocation may be waiting for it, and on Kafka the member's
		// other commits wait for that revocation to end (franz-go holds
		// its transactions meanwhile), so a partition kept until Leave
		// would hold up the stop of the rest for good.
		var wg sync.WaitGroup
		for tp, w := range workers {
			wg.Add(1)
			go func() { defer wg.Done(); w.stop(); s.Release(tp) }()
			delete(workers, tp)
			c.setWorker(tp, nil)
		}
		for range stopping {
			s.Release(<-stopped)
		}
		wg.Wait()
	}
	start := func(tp backend.TopicPartition) {
		w := c.startWorker(s, tp)
		workers[tp] = w
		c.setWorker(tp, w)
	}
	beat := time.NewTicker(c.cfg.heartbeat)
	defer beat.Stop()
	var caughtUp <-chan time.Time
	if untilCaughtUp {
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		caughtUp = t.C
	}
	assigned := false
	for {
		select {
		case <-caughtUp:
			if !assigned || len(stopping) > 0 {
				continue
			}
			done := true
			for _, w := range workers {
				done = done && w.caughtUp()
			}
			if done {
				stopAll()
				return nil
			}
		case <-ctx.Done():
			stopAll()
			return nil
		case <-beat.C:
			if err := s.Heartbeat(); err != nil {
				stopAll()
				return err
			}
			c.lastBeat.Store(time.Now().UnixNano())
			// A worker whose commit was refused as fenced stopped
			// itself. The member may keep the partition all the same (a
			// commit that met a rebalance the member came out of with
			// its partitions): then it runs again from the committed
			// offset once it stopped; if the partition moved, the next
			// assignment says so and it is released instead.
			for tp, w := range workers {
				if w.isFenced() {
					delete(workers, tp)
					c.setWorker(tp, nil)
					stopping[tp] = true
					go func() { w.stop(); stopped <- tp }()
				}
			}
		case tp := <-stopped:
			delete(stopping, tp)
			if want[tp] {
				start(tp) // assigned again while it stopped: still ours
			} else {
				s.Release(tp)
			}
		case tps, ok := <-s.Assignments():
			if !ok {
				stopAll()
				return fmt.Errorf("consumer: member %s of %q: %w", c.cfg.member, c.group, backend.ErrSessionExpired)
			}
			want = map[backend.TopicPartition]bool{}
			for _, tp := range tps {
				want[tp] = true
			}
			for tp, w := range workers {
				if !want[tp] {
					// It drains and commits before the partition moves.
					delete(workers, tp)
					c.setWorker(tp, nil)
					stopping[tp] = true
					go func() { w.stop(); stopped <- tp }()
				}
			}
			for tp := range want {
				if workers[tp] == nil && !stopping[tp] {
					start(tp)
				}
			}
			assigned = true
			c.readyOnce.Do(func() { close(c.ready) })
		}
	}
}

// laneJob asks a pool goroutine to process e and then the rest of its lane.
type laneJob struct {
	w *worker
	e *entry
}

// startPool starts the concurrency goroutines that run handlers and
// returns a function that stops them (after every worker has stopped).
func (c *Consumer) startPool() func() {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < c.cfg.concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case j := <-c.work:
					c.busy.Add(1)
					j.w.runLane(j.e)
					c.busy.Add(-1)
				case <-quit:
					return
				}
			}
		}()
	}
	return func() { close(quit); wg.Wait() }
}
