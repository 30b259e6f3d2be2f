package consumer

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// Settling a key: the partition's owner brings the key's dead letters back
// into processing, in the key's lane, straight from the DLQ.
//
// A settle job is a lane entry that holds no partition offset. It runs
// when the key's head entry (its first unresolved one) may go:
//   - requested: an operator redrove it (dlq.Queue.Redrive);
//   - class parked: it never failed itself, and nothing unresolved is in
//     front of it any more (the entry it parked behind was purged or moved);
//   - class scheduled, and due.
//
// The job handles the head like a message (retries, breaker, outputs), then
// marks it redriven, or dead again with how it failed, and goes on with the
// next entry while the head went through; it ends at a head that failed (the
// key stays parked behind it) or when nothing is left (the key is
// released). Messages of the key fetched meanwhile wait behind the job in
// the lane, so they run after every older entry of their key, and
// messages fetched before it park first, behind the same entries, in
// order. Entries without a key have no order to keep: each requested or
// due one is handled on the partition's keyless settle lane.

// looseLane is the lane of the partition's settle jobs for entries without
// a key. (A key of that name shares the lane, which only serializes the
// two; what is settled is told by settleRef, not by the lane's name.)
const looseLane = "\x00dlq"

func settleLane(key []byte) string {
	if key == nil {
		return looseLane
	}
	return string(key)
}

// settleRef names what a settle job settles: a key, or (loose) the
// entries without one.
type settleRef struct {
	key   string
	loose bool
}

func refOf(key []byte) settleRef { return settleRef{key: string(key), loose: key == nil} }

func (r settleRef) keyBytes() []byte {
	if r.loose {
		return nil
	}
	return []byte(r.key)
}

// eligible reports whether e, the head of its key, may be handled now.
func eligible(e dlq.Indexed, now time.Time) bool {
	switch {
	case e.State == dlq.StateRequested:
		return true
	case e.Class == dlq.ClassScheduled:
		return !e.RetryAt.After(now)
	case e.Class == dlq.ClassParked:
		return true
	}
	return false
}

// settleKey looks at key's DLQ entries (a nil key: the entries without a
// key) and queues a settle job on its lane if one may go, arms the due
// timer for a scheduled one, or reports the key released if it holds
// nothing any more.
func (w *worker) settleKey(key []byte) {
	if _, ok := w.dueEntry(key); !ok {
		return
	}
	lk := settleLane(key)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.settling[refOf(key)] || w.ctx.Err() != nil {
		return // a job is queued and has not started: it will see this
	}
	w.settling[refOf(key)] = true
	e := &entry{settle: true, key: key}
	if l := w.lanes[lk]; l != nil {
		l.waiting = append(l.waiting, e)
		return
	}
	w.lanes[lk] = &lane{}
	w.queueLocked(e)
}

// dueEntry returns the entry of key to handle now: its head, if that may
// go (a nil key: the first entry without a key that may). Otherwise it
// reports the key released if it holds nothing, or arms the due timer for
// a scheduled entry, and returns false.
func (w *worker) dueEntry(key []byte) (dlq.Indexed, bool) {
	pk := w.pk()
	now := time.Now()
	if key == nil {
		for _, e := range w.c.index.Unresolved(pk, nil) {
			if eligible(e, now) {
				return e, true
			}
			if e.Class == dlq.ClassScheduled {
				w.wakeAt(refOf(nil), e.RetryAt)
			}
		}
		return dlq.Indexed{}, false
	}
	head, ok := w.c.index.Head(pk, key)
	if ok {
		w.markParked(key)
	}
	switch {
	case !ok:
		w.released(key)
		return dlq.Indexed{}, false
	case !eligible(head, now):
		if head.Class == dlq.ClassScheduled {
			w.wakeAt(refOf(key), head.RetryAt)
		}
		return dlq.Indexed{}, false
	}
	return head, true
}

// released reports key no longer parked, and lets messages waiting for
// room to park go.
// It reports each release once: a key is announced released only if the
// worker saw it parked since it last did.
func (w *worker) released(key []byte) {
	w.mu.Lock()
	was := w.seenParked[string(key)]
	delete(w.seenParked, string(key))
	w.mu.Unlock()
	if was {
		w.c.emit(Event{Kind: EventReleased, Message: &ferry.Message{Topic: w.tp.Topic, Partition: w.tp.Partition, Key: key}})
	}
	w.resumeWaiting()
}

// markParked records that the worker saw key parked.
func (w *worker) markParked(key []byte) {
	w.mu.Lock()
	w.seenParked[string(key)] = true
	w.mu.Unlock()
}

// queueLocked hands e, the head of its lane, to the pool from the
// worker's starter goroutine (the caller may be a pool goroutine, and
// every other one may be busy).
func (w *worker) queueLocked(e *entry) {
	w.ready = append(w.ready, e)
	select {
	case w.readyKick <- struct{}{}:
	default:
	}
}

// starterLoop starts the lane heads queued by queueLocked, oldest first.
func (w *worker) starterLoop() {
	defer w.wg.Done()
	for {
		w.mu.Lock()
		var e *entry
		if len(w.ready) > 0 {
			e, w.ready = w.ready[0], w.ready[1:]
		}
		w.mu.Unlock()
		if e != nil {
			if !w.start(e) {
				return
			}
			continue
		}
		select {
		case <-w.readyKick:
		case <-w.ctx.Done():
			return
		}
	}
}

// wakeAt asks for r to be settled again at t (a scheduled retry comes
// due).
func (w *worker) wakeAt(r settleRef, t time.Time) {
	w.mu.Lock()
	if cur, ok := w.due[r]; !ok || t.Before(cur) {
		w.due[r] = t
	}
	w.mu.Unlock()
	select {
	case w.dueKick <- struct{}{}:
	default:
	}
}

// dueLoop settles keys whose scheduled retries come due.
func (w *worker) dueLoop() {
	defer w.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		next := now.Add(time.Hour)
		var due []settleRef
		w.mu.Lock()
		for k, t := range w.due {
			if !t.After(now) {
				due = append(due, k)
				delete(w.due, k)
			} else if t.Before(next) {
				next = t
			}
		}
		w.mu.Unlock()
		for _, r := range due {
			w.settleKey(r.keyBytes())
		}
		timer.Reset(time.Until(next))
		select {
		case <-timer.C:
		case <-w.dueKick:
		case <-w.ctx.Done():
			return
		}
	}
}

// dlqChanged settles the keys whose DLQ entries changed since it last
// looked (requests, purges, moves, the worker's own writes).
func (w *worker) dlqChanged() {
	select {
	case <-w.started:
	default:
		return // init settles every key once it is caught up
	}
	keys, loose := w.c.index.Changes(w.pk())
	for _, k := range keys {
		w.settleKey(k)
	}
	if loose {
		w.settleKey(nil)
	}
}

// settle runs a settle job: key's eligible entries, in order, until one
// fails or none is left.
func (w *worker) settle(e *entry) outcome {
	w.mu.Lock()
	delete(w.settling, refOf(e.key)) // a change from now on queues another job
	w.mu.Unlock()
	for w.ctx.Err() == nil {
		head, ok := w.dueEntry(e.key)
		if !ok {
			return handled
		}
		switch w.replay(head) {
		case abandoned:
			return abandoned
		case suspended:
			return handled // failed again: the key stays parked behind it
		}
	}
	return abandoned
}

// replay handles the DLQ entry d like a message: handled means it went
// through (marked redriven), suspended that it failed again (marked dead
// with how), abandoned that the worker stopped first (it stays as it was).
func (w *worker) replay(d dlq.Indexed) outcome {
	c := w.c
	var rec dlq.Entry
	if w.retry(w.ctx, "reading a dead letter to handle it", func() (err error) { rec, err = c.index.Record(w.ctx, d); return err }) != nil {
		return abandoned
	}
	m := rec.Original
	m.Headers = dlq.RedriveHeaders(m)
	c.emit(Event{Kind: EventRedriven, Message: m})
	done := dlq.Marker(c.cfg.dlqTopic, c.group, d, dlq.StateRedriven, nil)
	if eo := c.cfg.exactlyOnce; eo != nil {
		if seen, err := eo.Seen(w.ctx, m.ID); err == nil && seen {
			// Handled before a crash, its outputs and this entry's marker in
			// one batch: the marker is in the index already, unless the
			// entry was requested again since.
			return asOutcome(w.writeMarker(done))
		}
	}
	prior, first := 0, time.Time{}
	if d.Class == dlq.ClassScheduled {
		prior, first = d.Attempts, d.FirstFailure
	}
	r := w.attempts(m, m.Offset, prior, first)
	switch {
	case r.abandoned:
		return abandoned
	case r.ok:
		if !w.publishOutputs(m, r.out, done) {
			c.emit(Event{Kind: EventAbandoned, Message: m, Attempt: r.attempt})
			return abandoned
		}
		c.emit(Event{Kind: EventHandled, Message: m, Attempt: r.attempt, Duration: r.took})
		return handled
	}
	f := dlq.Failure{Group: c.group, Handler: c.cfg.handlerName, Attempts: r.f.attempts, First: r.f.first, Last: r.f.last,
		Err: r.f.err, Class: r.f.class, Reason: r.f.why}
	if r.durable {
		f.Class, f.RetryAt = dlq.ClassScheduled, r.f.last.Add(r.delay)
		f.Reason = scheduledReason(f.RetryAt, r.f.class)
	}
	if !w.writeMarker(dlq.Marker(c.cfg.dlqTopic, c.group, d, dlq.StateDead, &f)) {
		return abandoned
	}
	if r.durable {
		c.emit(Event{Kind: EventScheduled, Message: m, Attempt: r.f.attempts, Err: r.f.err, Class: r.f.class, Delay: r.delay})
	} else {
		c.emit(Event{Kind: EventDeadLettered, Message: m, Attempt: r.f.attempts, Err: r.f.err, Class: r.f.class})
	}
	return suspended
}

// writeMarker writes a marker of the group's DLQ and catches the index
// up, retrying until it is written (true) or the worker stops (false).
func (w *worker) writeMarker(marker *ferry.Message) bool {
	return w.awaitLease() == nil && w.publishDLQ(w.ctx, marker, nil)
}

// writeOutcome writes the marker of an entry just handled. The handler's
// effect happened, so a stop that comes meanwhile does not abandon the
// write (the entry would be handled again by the next owner): it gets
// finalWriteTimeout of its own.
func (w *worker) writeOutcome(marker *ferry.Message) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), finalWriteTimeout)
	defer cancel()
	return w.publishDLQ(ctx, marker, nil)
}

// finalWriteTimeout bounds writeOutcome after the worker stopped.
const finalWriteTimeout = 10 * time.Second

// publishDLQ writes a record of the DLQ topic and catches the index up,
// retrying until it is written (true) or ctx ends (false; m, if set, is
// then reported abandoned).
func (w *worker) publishDLQ(ctx context.Context, rec *ferry.Message, m *ferry.Message) bool {
	err := w.retry(ctx, "DLQ write", func() error { return w.c.b.Publish(ctx, rec) })
	if err != nil {
		if m != nil {
			w.c.emit(Event{Kind: EventAbandoned, Message: m, Err: err})
		}
		return false
	}
	// The index reads it back, in the DLQ's order: applying it out of turn
	// would put it before an operator's marker written just ahead of it (a
	// purge of the entry this worker was handling), which the DLQ itself
	// orders first.
	return w.catchUp(ctx)
}

// catchUp brings the index up to the DLQ's end, retrying until it does
// (true) or ctx ends (false).
func (w *worker) catchUp(ctx context.Context) bool {
	return w.retry(ctx, "reading the DLQ", func() error { return w.c.index.CatchUp(ctx) }) == nil
}

// retry calls fn until it succeeds (nil) or ctx ends (fn's last error),
// backing off from 10 ms to 5 s and logging each failure as what.
func (w *worker) retry(ctx context.Context, what string, fn func() error) error {
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := fn()
		if err == nil {
			return nil
		}
		w.c.cfg.logger.Warn(what+" failed; retrying", "topic", w.tp.Topic, "partition", w.tp.Partition, "dlq", w.c.cfg.dlqTopic, "err", err)
		if !sleepCtx(ctx, backoff) {
			return err
		}
	}
}

// followDLQ keeps the consumer's DLQ index caught up, and has each worker
// settle the keys whose entries changed, until ctx ends. It looks at the
// topic's end and fetches only what is there: a fetch that waits for new
// records would hold, on backends that share one reader per partition
// (Kafka, JetStream), every other reader of the DLQ.
func (c *Consumer) followDLQ(ctx context.Context) {
	for {
		if err := c.index.CatchUp(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.cfg.logger.Warn("following the DLQ failed; retrying", "dlq", c.cfg.dlqTopic, "err", err)
		} else {
			c.mu.Lock()
			ws := slices.Collect(maps.Values(c.workers))
			c.mu.Unlock()
			for _, w := range ws {
				w.dlqChanged()
			}
		}
		select {
		case <-time.After(dlqPoll):
		case <-ctx.Done():
			return
		}
	}
}

// dlqPoll is how often followDLQ looks at the end of the DLQ topic.
const dlqPoll = 250 * time.Millisecond

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func scheduledReason(due time.Time, class retry.Class) string {
	return "retry scheduled for " + due.UTC().Format(time.RFC3339) + " (" + string(class) + "): waits this long are kept in the DLQ"
}
