package consumer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// worker runs one assigned partition: a fetch loop that dispatches messages
// into per-key lanes, and a commit loop. Lock order: worker.mu only.
type worker struct {
	c      *Consumer
	s      backend.Session
	tp     backend.TopicPartition
	ctx    context.Context // canceled on stop: fetch ends, handlers see it
	cancel context.CancelFunc
	wg     sync.WaitGroup // fetch loop, commit loop, message goroutines
	// leaseUntil caches the session's lease (unix nanoseconds; see
	// awaitLease).
	leaseUntil atomic.Int64

	mu        sync.Mutex
	pending   []*entry         // dispatched, in offset order; head is the watermark
	lanes     map[string]*lane // key -> lane; present while the key is busy
	buffered  int              // dispatched and not finished
	next      uint64           // fetch position
	committed uint64           // last committed offset
	target    uint64           // the partition's end when it started (RunUntilCaughtUp)
	room      chan struct{}    // signaled when buffered drops
	started   chan struct{}    // closed once init has set next and committed and settled the parked keys
	fenced    bool
	reserved  map[string]bool    // keys whose first dead letter is being written (parked.go)
	roomWait  []*entry           // failed messages waiting for room to park their key, oldest first
	settling  map[settleRef]bool // keys with a settle job queued that has not started (settle.go)
	ready     []*entry           // lane heads for starterLoop to start
	readyKick chan struct{}
	due       map[settleRef]time.Time // keys to settle again when a scheduled retry is due
	dueKick   chan struct{}
	// seenParked holds the keys seen parked and not yet reported released
	// (so a release is reported once).
	seenParked map[string]bool
}

type entry struct {
	m      *ferry.Message
	offset uint64
	done   bool
	// settle marks a settle job (settle.go) for key: it holds no offset
	// of the partition.
	settle bool
	key    []byte
	// resume, when set, is what to do once the partition has room to
	// park one more key: the message failed for good (or for long) while
	// the parked-key bound was reached, and waits off the handler pool.
	resume func() outcome
}

// outcome is how processing a message ended.
type outcome int

const (
	handled   outcome = iota // handled or dead-lettered: the lane moves on
	abandoned                // the worker stopped first: it will be redelivered
	suspended                // waiting for room to park its key (see waitForRoom)
)

// lane holds the messages of one key waiting behind the one in flight.
type lane struct{ waiting []*entry }

func (c *Consumer) startWorker(s backend.Session, tp backend.TopicPartition) *worker {
	wctx, cancel := context.WithCancel(context.Background())
	w := &worker{c: c, s: s, tp: tp, ctx: wctx, cancel: cancel, lanes: map[string]*lane{}, room: make(chan struct{}, 1), started: make(chan struct{}),
		reserved: map[string]bool{}, settling: map[settleRef]bool{}, readyKick: make(chan struct{}, 1), due: map[settleRef]time.Time{}, dueKick: make(chan struct{}, 1), seenParked: map[string]bool{}}
	w.wg.Add(4)
	go w.fetchLoop()
	go w.commitLoop()
	go w.starterLoop()
	go w.dueLoop()
	return w
}

// init reads where the partition resumes (its committed offset, or its
// start), catches the DLQ index up and queues a settle job on the lane of
// every parked key whose entries may go, before anything is fetched: so
// they run before any message of their key. The backend may be away (a server
// restarting, a network partition): init then retries until it answers or
// the worker stops, so an outage pauses the partition instead of ending
// the consumer.
func (w *worker) init() bool {
	delay := 50 * time.Millisecond
	for {
		off, committed, end, err := w.c.resumeState(w.ctx, w.tp)
		if err == nil {
			w.mu.Lock()
			w.next, w.committed, w.target = off, committed, end
			w.mu.Unlock()
			w.c.index.Changes(w.pk()) // every key is settled now
			for _, k := range w.c.index.Keys(w.pk()) {
				w.settleKey(k)
			}
			w.settleKey(nil)
			close(w.started)
			return true
		}
		if w.ctx.Err() != nil {
			return false
		}
		w.c.cfg.logger.Warn("partition start failed; retrying", "topic", w.tp.Topic, "partition", w.tp.Partition, "err", err)
		select {
		case <-time.After(delay):
			delay = min(2*delay, 2*time.Second)
		case <-w.ctx.Done():
			return false
		}
	}
}

// resumeState returns the offset a partition resumes at, the offset to
// count as committed and the partition's end, with the exactly-once markers and the DLQ index
// caught up. A partition the group has no offset for starts where
// WithStart says; the position chosen is committed at the next commit
// (committed is then the partition's start), so a restart before any
// message was handled resumes there rather than choosing again.
func (c *Consumer) resumeState(ctx context.Context, tp backend.TopicPartition) (off, committed, end uint64, err error) {
	off, ok, err := c.b.Committed(ctx, c.group, tp)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("consumer: committed offset of %s/%d: %w", tp.Topic, tp.Partition, err)
	}
	start, end, err := c.b.Bounds(ctx, tp)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("consumer: bounds of %s/%d: %w", tp.Topic, tp.Partition, err)
	}
	committed = off
	if !ok {
		committed = start
		switch c.cfg.start.kind {
		case startLatest:
			off = end
		case startAt:
			if off, err = c.b.OffsetForTime(ctx, tp, c.cfg.start.at); err != nil {
				return 0, 0, 0, fmt.Errorf("consumer: offset of %s/%d at %v: %w", tp.Topic, tp.Partition, c.cfg.start.at, err)
			}
		}
	}
	if eo := c.cfg.exactlyOnce; eo != nil {
		// Markers the previous owner wrote (on another machine, perhaps)
		// before it committed are read now, so its inputs are skipped.
		if err := eo.Sync(ctx); err != nil {
			return 0, 0, 0, fmt.Errorf("consumer: exactly-once markers: %w", err)
		}
	}
	if off < start {
		off = start
	}
	committed = min(max(committed, start), off)
	// Everything the previous owner dead-lettered is in the index before
	// a message is fetched.
	if err := c.index.CatchUp(ctx); err != nil {
		return 0, 0, 0, fmt.Errorf("consumer: load parked keys of %s/%d: %w", tp.Topic, tp.Partition, err)
	}
	return off, committed, end, nil
}

// stop ends fetching, waits for in-flight messages (their handlers see a
// canceled context; those that do not finish are abandoned and will be
// redelivered) and commits the watermark.
func (w *worker) stop() {
	w.mu.Lock()
	w.cancel() // under mu: start's wg.Add either happened or sees it
	w.mu.Unlock()
	w.wg.Wait()
	w.commit(context.Background())
}

func (w *worker) fetchLoop() {
	defer w.wg.Done()
	if !w.init() {
		return
	}
	for w.ctx.Err() == nil {
		w.mu.Lock()
		// Two bounds: unfinished messages, and the entries held between the
		// watermark and the fetch position (a message stuck in a long retry
		// holds the watermark while later ones finish behind it).
		room := min(w.c.cfg.maxBuffered-w.buffered, w.c.cfg.maxPending()-len(w.pending))
		next := w.next
		w.mu.Unlock()
		if room <= 0 {
			select {
			case <-w.room:
				continue
			case <-w.ctx.Done():
				return
			}
		}
		res, err := w.c.b.Fetch(w.ctx, w.tp, next, min(room, w.c.cfg.fetchMax))
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			w.c.cfg.logger.Warn("fetch failed", "topic", w.tp.Topic, "partition", w.tp.Partition, "err", err)
			select {
			case <-time.After(100 * time.Millisecond):
			case <-w.ctx.Done():
				return
			}
			continue
		}
		for _, m := range res.Messages {
			if !w.dispatch(m) {
				return
			}
		}
		w.mu.Lock()
		w.next = max(w.next, res.Next)
		w.mu.Unlock()
	}
}

// laneKey is the key a message is ordered by. Messages without a key have
// no order to keep, so each gets a lane of its own.
func laneKey(m *ferry.Message) string {
	if m.Key == nil {
		return fmt.Sprintf("\x00%d", m.Offset)
	}
	return string(m.Key)
}

// dispatch queues m behind its key, or starts it if the key is idle. It
// returns false if the worker stopped while waiting for a slot.
func (w *worker) dispatch(m *ferry.Message) bool {
	e := &entry{m: m, offset: m.Offset}
	k := laneKey(m)
	w.mu.Lock()
	w.pending = append(w.pending, e)
	w.buffered++
	w.next = m.Offset + 1
	if l := w.lanes[k]; l != nil {
		l.waiting = append(l.waiting, e)
		w.mu.Unlock()
		return true
	}
	w.lanes[k] = &lane{}
	w.mu.Unlock()
	return w.start(e)
}

// start hands e to the pool, waiting for a free goroutine (this is what
// stalls the fetch loop when every one is busy). It returns false if the
// worker stopped first.
func (w *worker) start(e *entry) bool {
	w.mu.Lock()
	if w.ctx.Err() != nil {
		w.mu.Unlock()
		return false
	}
	w.wg.Add(1)
	w.mu.Unlock()
	select {
	case w.c.work <- laneJob{w, e}:
		return true
	case <-w.ctx.Done():
		w.wg.Done()
		return false
	}
}

// runLane processes e, then each message that queued behind it on the
// same key, in order, on the calling pool goroutine.
func (w *worker) runLane(e *entry) {
	defer w.wg.Done()
	for e != nil {
		switch w.process(e) {
		case abandoned:
			return // the lane stops; the partition is stopping
		case suspended:
			return // e stays at its lane's head; resumeWaiting restarts it
		}
		e = w.finish(e)
	}
}

// finish marks e done, advances the watermark, and returns the next
// message of its key, if one is waiting.
func (w *worker) finish(e *entry) *entry {
	k := settleLane(e.key)
	if !e.settle {
		k = laneKey(e.m)
	}
	w.mu.Lock()
	if !e.settle {
		e.done, e.m = true, nil
		w.buffered--
		n := 0
		for n < len(w.pending) && w.pending[n].done {
			n++
		}
		w.pending = w.pending[n:]
	}
	var next *entry
	if l := w.lanes[k]; l != nil && len(l.waiting) > 0 {
		next, l.waiting = l.waiting[0], l.waiting[1:]
	} else {
		delete(w.lanes, k)
	}
	w.mu.Unlock()
	select {
	case w.room <- struct{}{}:
	default:
	}
	if next != nil && w.ctx.Err() != nil {
		return nil
	}
	return next
}

// caughtUp reports whether the worker has started and finished every
// message up to the partition's end as it was when it started, with no
// settle job, lane or message left to run.
func (w *worker) caughtUp() bool {
	select {
	case <-w.started:
	default:
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.watermarkLocked() >= w.target && len(w.pending) == 0 && len(w.lanes) == 0 && len(w.settling) == 0 && len(w.ready) == 0
}

// watermark is the offset up to which every message is finished.
func (w *worker) watermarkLocked() uint64 {
	if len(w.pending) > 0 {
		return w.pending[0].offset
	}
	return w.next
}

// isFenced reports whether a commit of the worker was refused as fenced
// (it stopped itself then).
func (w *worker) isFenced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fenced
}

func (w *worker) commitLoop() {
	defer w.wg.Done()
	select {
	case <-w.started:
	case <-w.ctx.Done():
		return
	}
	t := time.NewTicker(w.c.cfg.commitInterval)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
			w.commit(w.ctx)
		}
	}
}

func (w *worker) commit(ctx context.Context) {
	w.mu.Lock()
	wm, fenced, committed := w.watermarkLocked(), w.fenced, w.committed
	w.mu.Unlock()
	if fenced || wm <= committed {
		return
	}
	err := w.c.b.Commit(ctx, w.s, backend.Offset{TopicPartition: w.tp, Offset: wm})
	switch {
	case err == nil:
		w.mu.Lock()
		w.committed = max(w.committed, wm)
		w.mu.Unlock()
	case errors.Is(err, backend.ErrFenced):
		w.mu.Lock()
		w.fenced = true
		w.mu.Unlock()
		w.cancel()
	default:
		w.c.cfg.logger.Warn("commit failed", "topic", w.tp.Topic, "partition", w.tp.Partition, "err", err)
	}
}

// process runs the handler with retries until the message is handled or
// dead-lettered, or the worker stops first (abandoned: it will be
// redelivered), or it must wait for room to park its key (suspended).
func (w *worker) process(e *entry) outcome {
	if r := e.resume; r != nil {
		e.resume = nil
		return r()
	}
	if e.settle {
		return w.settle(e)
	}
	return w.processFresh(e)
}

func asOutcome(ok bool) outcome {
	if ok {
		return handled
	}
	return abandoned
}

func (w *worker) processFresh(e *entry) outcome {
	c := w.c
	if eo := c.cfg.exactlyOnce; eo != nil {
		if seen, err := eo.Seen(w.ctx, e.m.ID); err == nil && seen {
			// Processed before a crash or rebalance: its outputs are in the
			// log already.
			c.emit(Event{Kind: EventStarted, Message: e.m, Attempt: 1})
			c.emit(Event{Kind: EventHandled, Message: e.m, Attempt: 0})
			return handled
		}
	}
	if c.index.Known(c.group, e.m.ID) {
		// Dead-lettered before (a blocker or a parked message redelivered
		// from the uncommitted window after a crash or rebalance, or an
		// entry handled from the DLQ since): its outcome is in the DLQ.
		c.cfg.logger.Info("skipping a redelivered message: its outcome is in the DLQ", e.m.LogAttrs())
		return handled
	}
	if w.isParked(e.m) {
		now := time.Now()
		err := fmt.Errorf("key %q is parked behind an earlier dead letter", e.m.Key)
		if !w.deadLetter(e.m, failure{first: now, last: now, err: err, class: dlq.ClassParked, why: "parked to keep the key's order until its earlier dead letters are handled"}) {
			return abandoned
		}
		return handled
	}
	// A message scheduled for a durable retry by an older version carries
	// its count in headers.
	prior, first := priorAttempts(e.m)
	r := w.attempts(e.m, e.offset, prior, first)
	switch {
	case r.abandoned:
		return abandoned
	case r.ok:
		if !w.publishOutputs(e.m, r.out, nil) {
			c.emit(Event{Kind: EventAbandoned, Message: e.m, Attempt: r.attempt})
			return abandoned
		}
		c.emit(Event{Kind: EventHandled, Message: e.m, Attempt: r.attempt, Duration: r.took})
		return handled
	}
	// Copies: a closure over r would move r to the heap on every call,
	// successes included.
	f, delay, durable := r.f, r.delay, r.durable
	park := func() outcome {
		defer w.unreserve(e.m.Key)
		if durable {
			return asOutcome(w.schedule(e.m, f, delay))
		}
		return asOutcome(w.deadLetter(e.m, f))
	}
	if !w.reserveParkOrWait(e, park) {
		return suspended
	}
	return park()
}

// result is how a message's attempts ended: ok (with its staged outputs),
// abandoned (the worker stopped), or failed for good or for long (durable:
// retry after delay through the DLQ).
type result struct {
	ok, abandoned, durable bool
	out                    []*ferry.Message
	attempt                int
	took                   time.Duration
	f                      failure
	delay                  time.Duration
}

// attempts runs the handler on m until it succeeds, fails for good, needs
// a retry delay of at least the durable threshold, or the worker stops.
// prior is how many attempts m had before, first when it first failed.
func (w *worker) attempts(m *ferry.Message, seed uint64, prior int, first time.Time) result {
	c := w.c
	var rng *rand.Rand // only failures need jitter
	for attempt := prior + 1; ; attempt++ {
		c.emit(Event{Kind: EventStarted, Message: m, Attempt: attempt})
		out := &outputs{}
		began := time.Now()
		err, counts, waited := w.callGuarded(m, attempt, out)
		took := time.Since(began)
		if !first.IsZero() {
			// Waiting while the breaker was open is the dependency's time,
			// not the message's: it does not count toward MaxElapsed (the
			// message would be dead-lettered the moment the dependency is
			// back).
			first = first.Add(waited)
		}
		if err == nil {
			return result{ok: true, out: out.msgs, attempt: attempt, took: took}
		}
		if w.ctx.Err() != nil {
			c.emit(Event{Kind: EventAbandoned, Message: m, Attempt: attempt, Err: err})
			return result{abandoned: true}
		}
		now := time.Now()
		if !counts {
			// The breaker opened: the dependency is down. Try again when it
			// lets calls through, without spending an attempt, and without
			// counting this call toward MaxElapsed either.
			if !first.IsZero() {
				first = first.Add(took - waited)
			}
			c.emit(Event{Kind: EventRetried, Message: m, Attempt: attempt, Err: err, Class: retry.Classify(err)})
			attempt--
			continue
		}
		if first.IsZero() {
			first = now
		}
		if rng == nil {
			rng = rand.New(rand.NewPCG(c.cfg.seed, seed))
		}
		d := c.cfg.policy.Next(attempt, now.Sub(first), err, rng)
		if !d.Retry && d.Class.Retryable() && c.breaker != nil && attempt < c.breaker.threshold {
			// An outage is not a DLQ flood: until the message has failed as
			// often as it takes to open the breaker, a retryable failure is
			// retried although MaxElapsed (or a long Retry-After) says give
			// up, or the first failures of an outage would be dead-lettered
			// while the breaker is still closed. MaxAttempts is at least the
			// threshold (validated), so only the time limit is lifted.
			p := c.cfg.policy
			p.MaxElapsed = 0
			d = p.Next(attempt, 0, err, rng)
		}
		f := failure{attempts: attempt, first: first, last: now, err: err, class: d.Class, why: d.Why}
		if !d.Retry {
			return result{f: f, attempt: attempt}
		}
		c.emit(Event{Kind: EventRetried, Message: m, Attempt: attempt, Err: err, Class: d.Class, Delay: d.Delay, Duration: took})
		if c.cfg.durableAfter > 0 && d.Delay >= c.cfg.durableAfter {
			return result{durable: true, f: f, delay: d.Delay, attempt: attempt}
		}
		if !sleepCtx(w.ctx, d.Delay) {
			c.emit(Event{Kind: EventAbandoned, Message: m, Attempt: attempt, Err: err})
			return result{abandoned: true}
		}
	}
}

// awaitLease returns once the member's session lease covers now, or the
// worker's context error if it stops first. Fencing at commit comes too
// late for a handler: a member that resumes after a pause longer than its
// session (SIGSTOP, a stalled host) would start its lanes' next messages
// while the partition's new owner runs the same keys. So no handler
// starts and no dead letter or marker is written past the lease: the
// worker waits for a heartbeat to renew it, or for the session's end to
// stop it (the message is then left to the next owner). A handler already
// running when the lease passes is not interrupted; its commit and its
// exactly-once outputs are fenced by the backend.
func (w *worker) awaitLease() error {
	if time.Now().UnixNano() < w.leaseUntil.Load() {
		return nil
	}
	for warned := false; ; {
		lease := w.s.Lease()
		if time.Now().Before(lease) {
			// A lease once granted stays a promise until its time (the
			// group removes a member only after it), so the worker keeps
			// it and asks the session again only when it has passed: the
			// session's lock is not taken on every call.
			w.leaseUntil.Store(lease.UnixNano())
			return nil
		}
		if !warned {
			warned = true
			w.c.cfg.logger.Warn("session lease passed: the partition may have another owner; waiting for a heartbeat before starting anything",
				"topic", w.tp.Topic, "partition", w.tp.Partition, "lease", lease)
		}
		if !sleepCtx(w.ctx, leasePoll) {
			return w.ctx.Err()
		}
	}
}

// leasePoll is how often a worker whose lease passed looks again.
const leasePoll = 10 * time.Millisecond

// callGuarded is call through the circuit breaker, if there is one.
func (w *worker) callGuarded(m *ferry.Message, attempt int, out *outputs) (err error, counts bool, waited time.Duration) {
	if w.c.breaker == nil {
		return w.call(m, attempt, out), true, 0
	}
	return w.c.breaker.run(w.ctx, func() error { return w.call(m, attempt, out) })
}

// callKey carries a handler call's attempt number and staged outputs.
type callKey struct{}

type callInfo struct {
	attempt int
	out     *outputs
}

// Attempt returns which attempt of the current message a handler's call is
// (1 for the first), or 0 outside a handler. Attempts restart at 1 when a
// message is redelivered after a rebalance or restart.
func Attempt(ctx context.Context) int {
	if ci, ok := ctx.Value(callKey{}).(*callInfo); ok {
		return ci.attempt
	}
	return 0
}

// call runs one attempt: with the per-attempt timeout, and with a panic
// turned into a *retry.PanicError carrying the stack.
func (w *worker) call(m *ferry.Message, attempt int, out *outputs) (err error) {
	if l := w.c.cfg.limiter; l != nil {
		if err := l.Wait(w.ctx); err != nil {
			return err
		}
	}
	if err := w.awaitLease(); err != nil {
		return err
	}
	ctx := context.WithValue(w.ctx, callKey{}, &callInfo{attempt: attempt, out: out})
	if t := w.c.cfg.policy.AttemptTimeout; t > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	defer func() {
		if v := recover(); v != nil {
			err = &retry.PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	err = w.c.handler(ctx, m)
	if err == nil && ctx.Err() != nil && w.ctx.Err() == nil {
		// The handler ignored its deadline and returned late: its effect
		// may be partial, so it counts as a timeout.
		err = fmt.Errorf("handler returned after its %s timeout: %w", w.c.cfg.policy.AttemptTimeout, ctx.Err())
	}
	return err
}
