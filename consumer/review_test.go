package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/retry"
)

// One WithCircuitBreaker option given to two consumers (a shared []Opt,
// as a service with several consumers builds it) must derive each one's
// threshold from its own policy. validate writes the derived threshold
// into the settings the option holds (&s of the closure, shared by every
// consumer it configures), so the first consumer's derivation leaks into
// the second: it gets the wrong threshold, or is refused.
func TestReviewBreakerOptionReusedAcrossConsumers(t *testing.T) {
	b := newBackend(t)
	h := func(context.Context, *ferry.Message) error { return nil }
	br := WithCircuitBreaker(BreakerSettings{})
	if _, err := New(b, "g1", []string{"in"}, h, br); err != nil { // MaxAttempts 5: threshold 5
		t.Fatal(err)
	}
	c, err := New(b, "g2", []string{"in"}, h, br, WithRetryPolicy(retry.Policy{MaxAttempts: 3}))
	if err != nil {
		t.Fatalf("second consumer with MaxAttempts 3 and the default threshold: %v (want threshold min(5, 3) = 3)", err)
	}
	if got := c.cfg.breaker.ConsecutiveFailures; got != 3 {
		t.Fatalf("second consumer's threshold %d, want 3", got)
	}

	br = WithCircuitBreaker(BreakerSettings{})
	if _, err := New(b, "g3", []string{"in"}, h, br, WithRetryPolicy(retry.Policy{MaxAttempts: 1})); err != nil {
		t.Fatal(err)
	}
	c, err = New(b, "g4", []string{"in"}, h, br)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.cfg.breaker.ConsecutiveFailures; got != 5 {
		t.Fatalf("consumer with the default policy after one with MaxAttempts 1: threshold %d, want 5", got)
	}
}

// The threshold check (ConsecutiveFailures <= MaxAttempts) promises that
// an outage never dead-letters a message before the breaker opens. The
// policy's MaxElapsed gives up sooner than MaxAttempts: the first failure
// of an outage went to the DLQ while the breaker (threshold 5) was still
// closed. Now a retryable failure is retried until the message failed as
// often as the threshold, whatever MaxElapsed says.
func TestReviewBreakerMaxElapsedDeadLettersDuringOutage(t *testing.T) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	down := func(context.Context, *ferry.Message) error {
		// The dependency is down and asks to come back in 1s (a 503 with
		// Retry-After).
		return ferry.RetryAfter(errors.New("dependency down"), time.Second)
	}
	var mu sync.Mutex
	var kinds []EventKind
	c, _ := startConsumer(t, b, down,
		WithDurableRetry(0),
		WithRetryPolicy(retry.Policy{InitialBackoff: 10 * time.Millisecond, MaxBackoff: time.Second, MaxAttempts: 5, MaxElapsed: 500 * time.Millisecond}),
		WithCircuitBreaker(BreakerSettings{OpenFor: time.Hour}),
		WithObserver(func(e Event) {
			mu.Lock()
			kinds = append(kinds, e.Kind)
			mu.Unlock()
		}))
	publish(t, b, "k/0")
	waitFor(t, "the first failure's outcome", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, k := range kinds {
			if k == EventRetried || k == EventDeadLettered {
				return true
			}
		}
		return false
	})
	mu.Lock()
	defer mu.Unlock()
	for _, k := range kinds {
		if k == EventDeadLettered {
			t.Fatalf("an outage dead-lettered k/0 while the breaker was %s (events %v)", c.Stats().Breaker, kinds)
		}
	}
}

// Exactly-once (defect 16): a dead letter that was redriven and handled
// from the DLQ (output written, entry marked redriven) is replayed from the
// uncommitted window after a restart (an earlier message of another key
// held the watermark). It must not be handled again: one output for the
// one input. (With redrive by copies, the copy's new ID escaped the
// idempotency marker and the replayed original was handled as new.)
func TestReviewRedrivenBlockerReplayedUnderExactlyOnce(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	for _, tp := range []string{"in", "out"} {
		if err := b.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	fixed, run := false, 1
	handler := func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		ok, r := fixed, run
		mu.Unlock()
		switch p := string(m.Payload); {
		case p == "hold/0" && r == 1:
			<-ctx.Done() // holds the watermark at offset 0 until the restart
			return ctx.Err()
		case p == "k/0" && !ok:
			return ferry.Permanent(errors.New("poison until fixed"))
		}
		return Emit(ctx, &ferry.Message{Topic: "out", Key: m.Key, Payload: append([]byte("out "), m.Payload...)})
	}
	outputs := func(p string) int {
		n := 0
		for _, m := range readTopic(t, b, "out") {
			if string(m.Payload) == "out "+p {
				n++
			}
		}
		return n
	}
	store, err := idempotency.OpenLog(ctx, b, "g.processed", time.Hour, 100000)
	if err != nil {
		t.Fatal(err)
	}
	_, stop := startConsumer(t, b, handler, WithExactlyOnce(store))
	publish(t, b, "hold/0", "k/0")
	q := dlq.Open(b, "g.dlq")
	waitFor(t, "k/0 dead-lettered", func() bool {
		entries, _ := q.List(ctx, dlq.Filter{})
		return len(entries) == 1
	})
	mu.Lock()
	fixed = true
	mu.Unlock()
	if _, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "k/0 handled from the DLQ", func() bool { return outputs("k/0") == 1 })
	stop() // a restart: hold/0 is abandoned, the watermark is 0

	mu.Lock()
	run = 2
	mu.Unlock()
	store2, err := idempotency.OpenLog(ctx, b, "g.processed", time.Hour, 100000)
	if err != nil {
		t.Fatal(err)
	}
	startConsumer(t, b, handler, WithExactlyOnce(store2))
	waitFor(t, "the partition caught up", func() bool {
		off, ok := b.Log().CommittedOffset("g", "in", 0)
		return ok && off == 2 && outputs("hold/0") == 1
	})
	if n := outputs("k/0"); n != 1 {
		t.Fatalf("exactly-once: input k/0 (dead-lettered, redriven, handled) has %d outputs, want 1", n)
	}
}

// A message pinned to a partition (PinPartition) that is dead-lettered
// parks its key on that partition. Redrive republishes the copies without
// the pin, so they land on the key's hash partition: the blocker's copy
// never reaches the worker holding the key parked, and the key stays
// parked there for good (every later message of the key on that partition
// goes to the DLQ).
func TestReviewRedriveOfPinnedMessageReleasesKey(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	if err := b.EnsureTopic(ctx, "in", 2); err != nil {
		t.Fatal(err)
	}
	pin := 1 - ferry.PartitionForKey([]byte("k"), 2) // not the key's hash partition
	rec := &handling{}
	var mu sync.Mutex
	fixed := false
	handler := func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		ok := fixed
		mu.Unlock()
		if string(m.Payload) == "k/0" && !ok {
			return ferry.Permanent(errors.New("poison until fixed"))
		}
		rec.record(m, Attempt(ctx))
		return nil
	}
	startConsumer(t, b, handler)
	pub := func(p string) {
		if err := b.Publish(ctx, &ferry.Message{Topic: "in", Key: []byte("k"), Payload: []byte(p), Partition: pin, PinPartition: true}); err != nil {
			t.Fatal(err)
		}
	}
	pub("k/0")
	pub("k/1")
	q := dlq.Open(b, "g.dlq")
	waitFor(t, "k/0 dead and k/1 parked", func() bool {
		entries, _ := q.List(ctx, dlq.Filter{})
		return len(entries) == 2
	})
	mu.Lock()
	fixed = true
	mu.Unlock()
	if _, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the copies handled", func() bool { return rec.handled("k/1") })
	pub("k/2")
	waitFor(t, "k/2 handled or parked", func() bool {
		entries, _ := q.List(ctx, dlq.Filter{})
		return rec.handled("k/2") || len(entries) > 0
	})
	if !rec.handled("k/2") {
		entries, _ := q.List(ctx, dlq.Filter{})
		var got []string
		for _, e := range entries {
			got = append(got, fmt.Sprintf("%s(%s, p%d)", e.Original.Payload, e.Class, e.Original.Partition))
		}
		t.Fatalf("after the key's redrive (copies handled: %v), k/2 on partition %d was parked: DLQ %v", rec.order("k/"), pin, got)
	}
}

// Suspicion (issue 16): time with the breaker open counted toward the
// policy's MaxElapsed. A message that waited out a 10 s outage behind the
// open breaker and then failed once more (the breaker closed again on
// another message's success) was dead-lettered at once: its time in
// failure included the outage. The outage's time is not the message's.
// The second case is the review's: the breaker stays open longer than
// MaxElapsed, and a/0's failing call after the outage counts (only the
// wait before calls that ended with the breaker open was taken off).
func TestBreakerOpenTimeDoesNotCountTowardMaxElapsed(t *testing.T) {
	for _, tc := range []struct {
		name    string
		openFor time.Duration
		bAt     time.Duration // when b/0, whose success closes the breaker, is published
	}{
		{"BreakerReopensDuringOutage", time.Second, 10 * time.Second},
		{"WaitBeforeACountedCall", 10 * time.Second, 10500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) { breakerOutage(t, tc.openFor, tc.bAt) })
	}
}

// breakerOutage: the dependency is down for 10 s; a/0 fails into the open
// breaker, fails once more after the outage, and must be handled, not
// dead-lettered for MaxElapsed (3 s).
func breakerOutage(t *testing.T, openFor, bAt time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		b := newBackend(t)
		if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var mu sync.Mutex
		flaky := true
		handler := func(ctx context.Context, m *ferry.Message) error {
			if time.Since(start) < 10*time.Second {
				return errors.New("dependency down")
			}
			mu.Lock()
			defer mu.Unlock()
			if string(m.Payload) == "a/0" && flaky {
				flaky = false
				return errors.New("one more timeout after the outage")
			}
			return nil
		}
		events := NewEventStream(10000)
		c, stop := startConsumer(t, b, handler, WithDurableRetry(0), WithConcurrency(2),
			WithRetryPolicy(retry.Policy{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxAttempts: 10, MaxElapsed: 3 * time.Second}),
			WithCircuitBreaker(BreakerSettings{ConsecutiveFailures: 3, OpenFor: openFor}),
			WithObserver(events.Observe))
		publish(t, b, "a/0")
		time.Sleep(bAt)
		publish(t, b, "b/0") // its success closes the breaker again
		time.Sleep(5 * time.Second)
		stop()
		var handled []string
		for len(events.Events()) > 0 {
			e := <-events.Events()
			switch e.Kind {
			case EventDeadLettered:
				t.Fatalf("%s dead-lettered at attempt %d after the outage (%v): the wait behind the open breaker counted toward MaxElapsed; breaker %s", e.Message.Payload, e.Attempt, e.Err, c.Stats().Breaker)
			case EventHandled:
				handled = append(handled, string(e.Message.Payload))
			}
		}
		slices.Sort(handled)
		if !slices.Equal(handled, []string{"a/0", "b/0"}) {
			t.Fatalf("handled %v, want a/0 and b/0", handled)
		}
	})
}
