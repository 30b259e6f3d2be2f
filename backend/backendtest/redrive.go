package backendtest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
)

// testRedriveOperations runs the operator's redrive and purge in the
// orders that once broke a key's order, on the backend under test: a
// redrive while no consumer runs, with a newer message published
// meanwhile; a restart in the middle of a redriven key; a purge of a
// blocker; two redrives of one key overlapping the consumer's own
// handling of it. Each message of the key must be handled, once, in its
// order.
func testRedriveOperations(t *testing.T, h Harness) {
	t.Run("WhileNoConsumerRuns", func(t *testing.T) {
		r := newRedriveRig(t, h, "redrive-idle")
		r.poison("s:0")
		stop := r.run()
		r.publish("s", 0, 3)
		r.waitUnresolved(3)
		stop()
		r.publish("s", 3, 4) // newer than the dead letters
		r.fix("s:0")
		r.redrive(dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("s")}})
		r.run()
		r.waitHandled(4)
	})
	t.Run("RestartMidRedrive", func(t *testing.T) {
		r := newRedriveRig(t, h, "redrive-restart")
		r.poison("s:0")
		stop := r.run()
		r.publish("s", 0, 4)
		r.waitUnresolved(4)
		r.fix("s:0")
		release := r.hold("s:1")
		r.redrive(dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("s")}})
		waitUntil(t, "s:1 started from the DLQ", func() bool { return r.started("s:1") })
		stop()
		release()
		r.publish("s", 4, 5)
		r.run()
		r.waitHandled(5)
	})
	t.Run("PurgeOfABlocker", func(t *testing.T) {
		r := newRedriveRig(t, h, "redrive-purge")
		r.poison("s:0")
		r.run()
		r.publish("s", 0, 3)
		es := r.waitUnresolved(3)
		if _, err := r.q.Purge(r.ctx, dlq.Filter{IDs: []ferry.ID{es[0].Original.ID}}); err != nil {
			t.Fatal(err)
		}
		r.purged(es[0].Original.ID)
		r.publish("s", 3, 4)
		r.waitHandled(3) // s:1..3; s:0 was purged
	})
	t.Run("OverlappingRedrives", func(t *testing.T) {
		r := newRedriveRig(t, h, "redrive-overlap")
		r.poison("s:0")
		r.run()
		r.publish("s", 0, 6)
		r.waitUnresolved(6)
		r.fix("s:0")
		release := r.hold("s:1")
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.redrive(dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("s")}, PerSecond: 20})
			}()
		}
		waitUntil(t, "s:1 started from the DLQ", func() bool { return r.started("s:1") })
		release()
		wg.Wait()
		r.publish("s", 6, 7)
		r.waitHandled(7)
	})
	t.Run("CrashBetweenHandlingAndMarker", func(t *testing.T) {
		// The owner handles s:0 from the DLQ and dies before its
		// "redriven" marker is written (on a backend without transactions
		// the handler's effect and the marker cannot be one write; without
		// exactly-once they are not on any backend). The next owner finds
		// s:0 still requested: it handles it again (at least once), then
		// s:1 and s:2, in order, and the DLQ ends empty.
		r := newRedriveRig(t, h, "redrive-crash")
		r.poison("s:0")
		stop := r.run()
		r.publish("s", 0, 3)
		r.waitUnresolved(3)
		stop()
		r.fix("s:0")
		r.redrive(dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("s")}})
		dying := &crashAtMarker{Backend: r.b}
		stopDying := runConsumer(t, dying, r.group, r.topic, r.handle)
		waitUntil(t, "s:0 handled and its marker refused", dying.crashed.Load)
		stopDying() // every later write of the dead member fails
		r.publish("s", 3, 4)
		r.run()
		waitUntil(t, "4 messages handled", func() bool { return r.rec.count() >= 4 })
		r.rec.check(t, 4)
		r.mu.Lock()
		for id, c := range r.success {
			if c > 2 {
				t.Errorf("message %s handled %d times (once before the crash, once after, at most)", id, c)
			}
		}
		r.mu.Unlock()
		r.waitEmpty()
	})
}

// crashAtMarker is a member's backend that dies at its first "redriven"
// marker: that write and every write after it fail.
type crashAtMarker struct {
	backend.Backend
	crashed atomic.Bool
}

var errCrashed = errors.New("backendtest: the member crashed")

func (c *crashAtMarker) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	for _, m := range msgs {
		if v, ok := m.Header(dlq.HeaderState); ok && string(v) == dlq.StateRedriven {
			c.crashed.Store(true)
		}
	}
	if c.crashed.Load() {
		return errCrashed
	}
	return c.Backend.Publish(ctx, msgs...)
}

func (c *crashAtMarker) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	if c.crashed.Load() {
		return errCrashed
	}
	return c.Backend.Commit(ctx, s, offsets...)
}

// redriveRig is one scenario's backend, topic, consumer and handler.
type redriveRig struct {
	t     *testing.T
	b     backend.Backend
	ctx   context.Context
	topic string
	group string
	q     *dlq.Queue
	rec   *recorder

	mu      sync.Mutex
	bad     map[string]bool
	held    map[string]chan struct{}
	begun   map[string]bool
	success map[ferry.ID]int
	gone    map[ferry.ID]bool
}

// newRedriveRig makes a rig on topic, a name no other test of the suite
// uses (a harness may share one cluster between tests).
func newRedriveRig(t *testing.T, h Harness, topic string) *redriveRig {
	b := h.New(t)
	ensure(t, b, topic, 1)
	group := topic + "-group"
	return &redriveRig{t: t, b: b, ctx: ctxFor(t), topic: topic, group: group, q: dlq.Open(b, group+".dlq"), rec: newRecorder(),
		bad: map[string]bool{}, held: map[string]chan struct{}{}, begun: map[string]bool{}, success: map[ferry.ID]int{}, gone: map[ferry.ID]bool{}}
}

func (r *redriveRig) poison(p string) { r.mu.Lock(); r.bad[p] = true; r.mu.Unlock() }
func (r *redriveRig) fix(p string)    { r.mu.Lock(); delete(r.bad, p); r.mu.Unlock() }

func (r *redriveRig) purged(id ferry.ID) { r.mu.Lock(); r.gone[id] = true; r.mu.Unlock() }

func (r *redriveRig) started(p string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.begun[p]
}

// hold makes p's handler wait until the returned function is called (or
// its context ends).
func (r *redriveRig) hold(p string) func() {
	ch := make(chan struct{})
	r.mu.Lock()
	r.held[p] = ch
	r.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (r *redriveRig) handle(ctx context.Context, m *ferry.Message) error {
	p := string(m.Payload)
	r.mu.Lock()
	r.begun[p] = true
	held, bad := r.held[p], r.bad[p]
	r.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if bad {
		return ferry.Permanent(errors.New("cannot be processed yet"))
	}
	r.mu.Lock()
	r.success[m.ID]++
	r.mu.Unlock()
	r.rec.record(m, m.ID)
	return nil
}

func (r *redriveRig) run() func() { return runConsumer(r.t, r.b, r.group, r.topic, r.handle) }

func (r *redriveRig) publish(key string, from, to int) {
	r.t.Helper()
	for i := from; i < to; i++ {
		if err := r.b.Publish(r.ctx, msg(r.topic, key, i)); err != nil {
			r.t.Fatal(err)
		}
	}
}

func (r *redriveRig) redrive(o dlq.RedriveOpts) {
	if _, err := r.q.Redrive(r.ctx, o); err != nil {
		r.t.Errorf("redrive: %v", err)
	}
}

func (r *redriveRig) waitUnresolved(n int) []dlq.Entry {
	r.t.Helper()
	var es []dlq.Entry
	waitUntil(r.t, fmt.Sprintf("%d entries in the DLQ", n), func() bool {
		es, _ = r.q.List(r.ctx, dlq.Filter{})
		return len(es) == n
	})
	return es
}

// waitHandled waits for n messages handled and checks order and that no
// message succeeded twice (these scenarios stop consumers only when no
// handler is about to succeed).
func (r *redriveRig) waitHandled(n int) {
	r.t.Helper()
	waitUntil(r.t, fmt.Sprintf("%d messages handled", n), func() bool { return r.rec.count() >= n })
	r.rec.check(r.t, n)
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, c := range r.success {
		if c > 1 {
			r.t.Errorf("message %s handled %d times", id, c)
		}
		if r.gone[id] {
			r.t.Errorf("purged message %s handled", id)
		}
	}
	r.waitEmpty()
}

// waitEmpty waits until the DLQ lists nothing unresolved. An entry handled
// from the DLQ is marked redriven just after its handler returned, so the
// last one may still show for a moment.
func (r *redriveRig) waitEmpty() {
	r.t.Helper()
	var left []dlq.Entry
	deadline := time.Now().Add(10 * time.Second)
	for left, _ = r.q.List(r.ctx, dlq.Filter{}); len(left) != 0 && time.Now().Before(deadline); left, _ = r.q.List(r.ctx, dlq.Filter{}) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(left) != 0 {
		r.t.Errorf("%d entries left unresolved in the DLQ 10s after the last message was handled", len(left))
	}
}
