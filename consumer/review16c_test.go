package consumer

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
)

// R1: a handler of an entry handled from the DLQ that finishes
// successfully while the partition stops (graceful stop / rebalance, no
// crash): the redriven marker is written with the canceled worker context,
// fails, the entry stays requested, and the next owner handles it again.
func TestReview16cStopDuringSettleDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		gate := make(chan struct{})
		var gmu sync.Mutex
		gated := false
		h := func(ctx context.Context, m *ferry.Message) error {
			gmu.Lock()
			g := gated && string(m.Payload) == "k/0"
			gmu.Unlock()
			if g {
				<-gate // ignores ctx: it finishes its work, then returns nil
			}
			return s.handle(ctx, m)
		}
		_, stop := startConsumer(t, b, h)
		publish(t, b, "k/0", "k/1")
		waitDead(t, q, 2)
		s.set(s.poison, false, "k/0")
		gmu.Lock()
		gated = true
		gmu.Unlock()
		redriveKey(t, q, "k")
		time.Sleep(400 * time.Millisecond) // the settle job is in k/0's handler
		stopped := make(chan struct{})
		go func() { stop(); close(stopped) }()
		time.Sleep(100 * time.Millisecond) // the worker's context is canceled
		gmu.Lock()
		gated = false
		gmu.Unlock()
		close(gate)
		<-stopped
		startConsumer(t, b, s.handle)
		s.wantHandled(t, "k/0", "k/1")
	})
}

// R2: an operator's rate-limited redrive overlapping the consumer's own
// handling (Defect 1's sequence): request markers landing after the
// entries were handled leave them "requested" in List forever, though
// the consumer considers them resolved.
func TestReview16cOverlappingRedriveLeavesRequestedForever(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.durable, true, "k/0")
		startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2", "k/3", "k/4", "k/5")
		waitDead(t, q, 6)
		done := make(chan struct{})
		go func() {
			defer close(done)
			q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}, PerSecond: 5})
		}()
		s.wantHandled(t, "k/0", "k/1", "k/2", "k/3", "k/4", "k/5")
		<-done
		time.Sleep(500 * time.Millisecond)
		if es, _ := q.List(context.Background(), dlq.Filter{}); len(es) != 0 {
			t.Fatalf("every message handled once, but the DLQ lists %v", payloads(es))
		}
	})
}

// R3: a purge of an entry while its replay runs, the replay failing
// again: the "dead" marker lands after "purged". List shows the entry
// dead; a redrive of it requests it, and nothing ever handles it (the
// index never brings a resolved entry back).
func TestReview16cPurgeDuringFailingReplayStrandsEntry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1")
		waitDead(t, q, 2)
		release := s.hold("k/0")
		redriveKey(t, q, "k")
		waitFor(t, "k/0 started from the DLQ", func() bool { return s.startedCount("k/0") > 1 })
		ctx := context.Background()
		es, _ := q.List(ctx, dlq.Filter{Key: []byte("k")})
		if _, err := q.Purge(ctx, dlq.Filter{IDs: []ferry.ID{es[0].Original.ID}}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(600 * time.Millisecond) // followDLQ applies the purge
		release()                          // k/0 fails again (still poison): marked dead after the purge
		s.wantHandled(t, "k/1")
		es, _ = q.List(ctx, dlq.Filter{})
		t.Logf("DLQ after the purge and the failure: %v", payloads(es))
		if len(es) == 0 {
			return // consistent: purged
		}
		s.set(s.poison, false, "k/0")
		n, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("redrive took %d", n)
		waitFor(t, "k/0 handled after its redrive", func() bool {
			return len(s.handled()) == 2
		})
	})
}

// R4: a DLQ topic with more than one partition (created beforehand; the
// consumer's EnsureTopic(dlq, 1) accepts it) is refused with a clear
// error: the index reads one partition, in one order.
func TestReview16cMultiPartitionDLQ(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, _ := setupIn(t)
		if err := b.EnsureTopic(context.Background(), "g.dlq", 4); err != nil {
			t.Fatal(err)
		}
		c, err := New(b, "g", []string{"in"}, func(context.Context, *ferry.Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		err = c.Run(context.Background())
		if !errors.Is(err, ferry.ErrInvalidArgument) || !strings.Contains(err.Error(), "has 4 partitions") {
			t.Fatalf("Run with a 4-partition DLQ: %v, want ErrInvalidArgument naming the partitions", err)
		}
	})
}

// R5: a key equal to the keyless settle lane's name ("\x00dlq"): its due
// scheduled retry is taken by dueLoop for the keyless entries, and the
// key stays parked.
func TestReview16cKeyNamedLikeLooseLane(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { testLooseLaneKey(t, "\x00dlq") })
}

// The control: the same sequence with an ordinary key passes.
func TestReview16cKeyNamedLikeLooseLaneControl(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { testLooseLaneKey(t, "x") })
}

func testLooseLaneKey(t *testing.T, key string) {
	b, _ := setupIn(t)
	rec := &handling{}
	h := func(ctx context.Context, m *ferry.Message) error {
		if string(m.Payload) == key+"/0" && Attempt(ctx) == 1 {
			// Due in 1s: followDLQ's ticks all come before it, so only the
			// due timer can settle the key.
			return ferry.RetryAfter(errors.New("later"), time.Second)
		}
		rec.record(m, Attempt(ctx))
		return nil
	}
	startConsumer(t, b, h)
	publish(t, b, key+"/0", key+"/1")
	deadline := time.Now().Add(5 * time.Second)
	for !rec.handled(key + "/1") {
		if time.Now().After(deadline) {
			t.Fatalf("key %q: a scheduled retry due after 1s not settled after 5s (handled %v)", key, rec.order(key))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
