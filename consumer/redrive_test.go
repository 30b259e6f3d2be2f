package consumer

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
)

// The regression tests of issue 16's redrive defects: each runs the
// operations of its report, in its order, and checks that every message of
// the key is handled once, in publication order. Each runs in a
// testing/synctest bubble: the waits below (a scheduled retry coming due,
// the pause that lets a late duplicate show) pass in virtual time.

// script is a handler whose failures the test changes as it goes: a
// poison payload fails for good, a held one blocks until released (or its
// context ends), a durable one asks once for a retry far enough off to be
// scheduled through the DLQ.
type script struct {
	mu      sync.Mutex
	poison  map[string]bool
	held    map[string]chan struct{}
	durable map[string]bool
	started map[string]int
	ok      []string // payloads handled successfully, in order
}

func newScript() *script {
	return &script{poison: map[string]bool{}, held: map[string]chan struct{}{}, durable: map[string]bool{}, started: map[string]int{}}
}

func (s *script) set(m map[string]bool, v bool, ps ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range ps {
		m[p] = v
	}
}

// hold makes p's handler block until the returned function is called.
func (s *script) hold(p string) func() {
	ch := make(chan struct{})
	s.mu.Lock()
	s.held[p] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (s *script) handle(ctx context.Context, m *ferry.Message) error {
	p := string(m.Payload)
	s.mu.Lock()
	s.started[p]++
	held, poison, durable := s.held[p], s.poison[p], s.durable[p]
	if durable {
		delete(s.durable, p)
	}
	s.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	switch {
	case poison:
		return ferry.Permanent(errors.New("poison until fixed"))
	case durable:
		return ferry.RetryAfter(errors.New("come back later"), 150*time.Millisecond)
	}
	s.mu.Lock()
	s.ok = append(s.ok, p)
	s.mu.Unlock()
	return nil
}

func (s *script) handled() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ok)
}

func (s *script) startedCount(p string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started[p]
}

// wantHandled waits until the handled list has len(want) entries (and a
// little longer, so a late duplicate shows) and compares.
func (s *script) wantHandled(t *testing.T, want ...string) {
	t.Helper()
	waitFor(t, "every message handled", func() bool { return len(s.handled()) >= len(want) })
	time.Sleep(300 * time.Millisecond) // a duplicate or a straggler would arrive now
	if got := s.handled(); !slices.Equal(got, want) {
		t.Fatalf("handled %v, want each once in order %v", got, want)
	}
}

func waitDead(t *testing.T, q *dlq.Queue, n int) {
	t.Helper()
	waitFor(t, "dead letters", func() bool {
		es, _ := q.List(context.Background(), dlq.Filter{State: dlq.StateDead})
		return len(es) == n
	})
}

func redriveKey(t *testing.T, q *dlq.Queue, key string) {
	t.Helper()
	if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte(key)}}); err != nil {
		t.Fatal(err)
	}
}

func setupIn(t *testing.T) (backend.Backend, *dlq.Queue) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	return b, dlq.Open(b, "g.dlq")
}

// Defect 1: k/0 scheduled as a durable retry with k/1..k/7 parked behind
// it, and an operator's rate-limited redrive of the key overlapping the
// consumer's own: each message once, in order.
func TestRegress16OverlappingRedrivesNeitherDuplicateNorReorder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.durable, true, "k/0")
		release := s.hold("k/1")
		startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2", "k/3", "k/4", "k/5", "k/6", "k/7")
		waitDead(t, q, 8)
		go func() {
			// The operator's redrive runs while the consumer handles the key.
			q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}, PerSecond: 20})
		}()
		waitFor(t, "k/1 started", func() bool { return s.startedCount("k/1") > 0 })
		release()
		s.wantHandled(t, "k/0", "k/1", "k/2", "k/3", "k/4", "k/5", "k/6", "k/7")
	})
}

// Defect 2a: the consumer is stopped with k/0 dead and k/1 parked; k/2 is
// published; the operator redrives; the consumer starts. k/2 is newer and
// must come last.
func TestRegress16RedriveWhileStoppedKeepsOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		_, stop := startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1")
		waitDead(t, q, 2)
		stop()
		publish(t, b, "k/2")
		s.set(s.poison, false, "k/0")
		redriveKey(t, q, "k")
		startConsumer(t, b, s.handle)
		s.wantHandled(t, "k/0", "k/1", "k/2")
	})
}

// Defect 2b: a scheduled retry that is due when the partition is assigned
// runs before the key's newer messages, however slowly the start goes.
func TestRegress16DueRetryAtStartKeepsOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.durable, true, "k/0")
		_, stop := startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1")
		waitDead(t, q, 2)
		stop()
		publish(t, b, "k/2")
		time.Sleep(200 * time.Millisecond) // k/0 is due
		startConsumer(t, b, s.handle)
		s.wantHandled(t, "k/0", "k/1", "k/2")
	})
}

// Defect 2c: a restart while a redriven key is being handled, with a newer
// message published meanwhile.
func TestRegress16RestartMidRedriveKeepsOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		_, stop := startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2")
		waitDead(t, q, 3)
		s.set(s.poison, false, "k/0")
		release := s.hold("k/1")
		redriveKey(t, q, "k")
		waitFor(t, "k/1 started from the DLQ", func() bool { return s.startedCount("k/1") > 0 })
		stop() // k/1's handler sees its context end: abandoned
		release()
		publish(t, b, "k/3")
		startConsumer(t, b, s.handle)
		s.wantHandled(t, "k/0", "k/1", "k/2", "k/3")
	})
}

// Defect 14: a message of the key published while a multi-entry redrive
// of the key runs comes after every redriven entry.
func TestRegress16PublishDuringRedriveComesLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2", "k/3")
		waitDead(t, q, 4)
		s.set(s.poison, false, "k/0")
		release := s.hold("k/1")
		redriveKey(t, q, "k")
		waitFor(t, "k/1 started from the DLQ", func() bool { return s.startedCount("k/1") > 0 })
		publish(t, b, "k/4")
		time.Sleep(50 * time.Millisecond)
		release()
		s.wantHandled(t, "k/0", "k/1", "k/2", "k/3", "k/4")
	})
}

// Defect 15: an entry that fails again while its key is redriven parks the
// key behind itself, in its original place: the later entries and a newer
// message follow it, in order, after a restart and a second redrive.
func TestRegress16EntryFailingAgainKeepsItsPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0", "k/2")
		_, stop := startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2", "k/3")
		waitDead(t, q, 4)
		s.set(s.poison, false, "k/0")
		redriveKey(t, q, "k")
		waitFor(t, "k/2 failed again", func() bool { return s.startedCount("k/2") > 0 })
		publish(t, b, "k/4")
		waitFor(t, "k/4 parked", func() bool { // k/2 dead again, k/3 still requested, k/4 parked
			es, _ := q.List(context.Background(), dlq.Filter{})
			return len(es) == 3
		})
		if es, _ := q.List(context.Background(), dlq.Filter{}); len(es) != 3 || string(es[0].Original.Payload) != "k/2" || es[0].State != dlq.StateDead {
			t.Fatalf("after k/2 failed again the key's entries are %v", payloads(es))
		}
		stop()
		s.set(s.poison, false, "k/2")
		startConsumer(t, b, s.handle)
		redriveKey(t, q, "k")
		s.wantHandled(t, "k/0", "k/1", "k/2", "k/3", "k/4")
	})
}

// Purge: purging a key's blocker lets the messages parked behind it go in
// order, and purging every entry of a key lets its new messages flow,
// with the consumer running throughout (defect 6).
func TestRegress16PurgeMovesTheKeyOn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0", "j/0")
		startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2", "j/0", "j/1")
		waitDead(t, q, 5)
		ctx := context.Background()
		es, _ := q.List(ctx, dlq.Filter{Key: []byte("k")})
		if _, err := q.Purge(ctx, dlq.Filter{IDs: []ferry.ID{es[0].Original.ID}}); err != nil {
			t.Fatal(err)
		}
		if _, err := q.Purge(ctx, dlq.Filter{Key: []byte("j")}); err != nil {
			t.Fatal(err)
		}
		publish(t, b, "k/3", "j/2")
		waitFor(t, "k and j moved on", func() bool { return len(s.handled()) >= 4 })
		got := s.handled()
		var k, j []string
		for _, p := range got {
			if p[0] == 'k' {
				k = append(k, p)
			} else {
				j = append(j, p)
			}
		}
		if !slices.Equal(k, []string{"k/1", "k/2", "k/3"}) || !slices.Equal(j, []string{"j/2"}) {
			t.Fatalf("after the purges: k %v (want k/1 k/2 k/3), j %v (want j/2)", k, j)
		}
	})
}

func payloads(es []dlq.Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, string(e.Original.Payload)+":"+e.State)
	}
	return out
}

// Defects 3 and 16 without exactly-once: k/0, dead-lettered and then
// handled from the DLQ, is redelivered from the uncommitted window after a
// restart (hold/0, of another key, held the watermark). Its outcome is in
// the DLQ, so it is not handled again.
func TestRegress16HandledEntryNotHandledAgainFromItsPartition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		release := s.hold("hold/0")
		_, stop := startConsumer(t, b, s.handle)
		publish(t, b, "hold/0", "k/0", "k/1")
		waitDead(t, q, 2)
		s.set(s.poison, false, "k/0")
		redriveKey(t, q, "k")
		waitFor(t, "k handled from the DLQ", func() bool { return len(s.handled()) == 2 })
		stop() // hold/0 abandoned: the committed offset stays at 0
		release()
		startConsumer(t, b, s.handle)
		s.wantHandled(t, "k/0", "k/1", "hold/0")
	})
}
