package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// handling records handler calls in order, per key.
type handling struct {
	mu    sync.Mutex
	calls []string // "payload@attempt"
	done  map[string]bool
}

func (h *handling) record(m *ferry.Message, attempt int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, fmt.Sprintf("%s@%d", m.Payload, attempt))
	if h.done == nil {
		h.done = map[string]bool{}
	}
	h.done[string(m.Payload)] = true
}

func (h *handling) handled(p string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.done[p]
}

// order returns the calls whose payload starts with prefix.
func (h *handling) order(prefix string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, c := range h.calls {
		if len(c) >= len(prefix) && c[:len(prefix)] == prefix {
			out = append(out, c)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func startConsumer(t *testing.T, b backend.Backend, h Handler, opts ...Opt) (*Consumer, func()) {
	t.Helper()
	opts = append([]Opt{WithCommitInterval(10 * time.Millisecond), WithDurableRetry(100 * time.Millisecond),
		WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxAttempts: 5})}, opts...)
	c, err := New(b, "g", []string{"in"}, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("consumer: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func publish(t *testing.T, b backend.Backend, payloads ...string) {
	t.Helper()
	for _, p := range payloads {
		k, _, _ := cutKey(p)
		if err := b.Publish(context.Background(), &ferry.Message{Topic: "in", Key: []byte(k), Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
}

func cutKey(p string) (string, string, bool) {
	for i := range p {
		if p[i] == '/' {
			return p[:i], p[i+1:], true
		}
	}
	return p, "", false
}

// A retry longer than the durable threshold goes to the DLQ as a
// scheduled entry, the rest of the partition keeps flowing, the key's
// later messages park behind it, and a consumer started after a restart
// (nothing in memory) redrives it when due: the retry runs as attempt 2
// and the key's messages follow in order.
func TestDurableRetrySurvivesRestart(t *testing.T) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	rec := &handling{}
	handler := func(ctx context.Context, m *ferry.Message) error {
		if string(m.Payload) == "slow/0" && Attempt(ctx) == 1 {
			return ferry.RetryAfter(errors.New("the dependency asks to come back later"), 2*time.Second)
		}
		rec.record(m, Attempt(ctx))
		return nil
	}
	events := NewEventStream(1000)
	first, stop := startConsumer(t, b, handler, WithObserver(events.Observe))
	publish(t, b, "slow/0", "slow/1", "fast/0", "fast/1", "fast/2", "slow/2", "fast/3")
	waitFor(t, "the other key", func() bool { return rec.handled("fast/3") })
	q := dlq.Open(b, "g.dlq")
	var entries []dlq.Entry
	waitFor(t, "the scheduled retry and the parked messages", func() bool {
		entries, _ = q.List(context.Background(), dlq.Filter{})
		return len(entries) == 3
	})
	if e := entries[0]; e.Class != dlq.ClassScheduled || string(e.Original.Payload) != "slow/0" || e.RetryAt.Before(e.LastFailure.Add(2*time.Second)) || e.Attempts != 1 {
		t.Fatalf("first entry: class %s payload %s retry at %v (failed %v) attempts %d", e.Class, e.Original.Payload, e.RetryAt, e.LastFailure, e.Attempts)
	}
	if entries[1].Class != dlq.ClassParked || entries[2].Class != dlq.ClassParked {
		t.Fatalf("later messages of the key: classes %s, %s, want parked", entries[1].Class, entries[2].Class)
	}
	// The entries are in the DLQ a moment before the worker has followed
	// its own writes and let the offsets go, so this waits for the stats
	// rather than reading them once; a watermark that waits for the retry
	// never gets there.
	var st Stats
	waitFor(t, "one parked key and nothing pending (the watermark must not wait for the retry)", func() bool {
		st = first.Stats()
		return st.ParkedKeys == 1 && st.Pending == 0
	})
	stop() // a restart: the wait is not in memory anywhere now
	if got := rec.order("slow/"); len(got) != 0 {
		t.Fatalf("slow key handled before its retry was due: %v", got)
	}
	startConsumer(t, b, handler, WithObserver(events.Observe))
	waitFor(t, "the retried key", func() bool { return rec.handled("slow/2") })
	if got, want := fmt.Sprint(rec.order("slow/")), "[slow/0@2 slow/1@1 slow/2@1]"; got != want {
		t.Fatalf("slow key handled as %s, want %s", got, want)
	}
	waitFor(t, "an empty DLQ", func() bool {
		entries, _ = q.List(context.Background(), dlq.Filter{})
		return len(entries) == 0
	})
	// The DLQ reads empty a moment before the worker's index followed the
	// last marker and announced the key released: wait for the event.
	kinds := map[EventKind]int{}
	waitFor(t, "the key's release", func() bool {
		for len(events.Events()) > 0 {
			kinds[(<-events.Events()).Kind]++
		}
		return kinds[EventReleased] > 0
	})
	// Redriven events: the due retry, plus any of the key's entries the
	// blocker's copy found still dead (the redrive marks them one by one).
	if kinds[EventScheduled] != 1 || kinds[EventRedriven] < 1 || kinds[EventReleased] != 1 {
		t.Fatalf("lifecycle events: %v; want one scheduled, at least one redriven, one released", kinds)
	}
}

// gatedDLQ holds the writes of parked entries until the test opens the
// gate, so a redrive can run before the worker parked all of a key.
type gatedDLQ struct {
	backend.Backend
	blocked chan struct{} // receives once per held write
	gate    chan struct{}
}

func (g *gatedDLQ) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	for _, m := range msgs {
		if c, ok := m.Header(dlq.HeaderClass); ok && string(c) == string(dlq.ClassParked) {
			g.blocked <- struct{}{}
			<-g.gate
		}
	}
	return g.Backend.Publish(ctx, msgs...)
}

// A redrive that runs while later messages of the key are still on their
// way into the DLQ does not strand them: the blocker's copy finds them
// dead, redrives them too, and the key is released only after their
// copies, so the key's order holds and the DLQ ends empty.
func TestRedriveCatchesMessagesParkedAfterIt(t *testing.T) {
	b := &gatedDLQ{Backend: newBackend(t), blocked: make(chan struct{}, 16), gate: make(chan struct{})}
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
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
	publish(t, b, "k/0", "k/1", "k/2", "other/0")
	<-b.blocked // k/1 is being parked; its entry is not in the DLQ yet
	q := dlq.Open(b, "g.dlq")
	mu.Lock()
	fixed = true
	mu.Unlock()
	if n, err := q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}}); err != nil || n != 1 {
		t.Fatalf("redrive: %d, %v (want only the blocker: the rest is not in the DLQ yet)", n, err)
	}
	close(b.gate)
	waitFor(t, "the key's messages", func() bool { return rec.handled("k/2") })
	if got, want := fmt.Sprint(rec.order("k/")), "[k/0@1 k/1@1 k/2@1]"; got != want {
		t.Fatalf("key handled as %s, want %s", got, want)
	}
	waitFor(t, "an empty DLQ", func() bool {
		entries, _ := q.List(context.Background(), dlq.Filter{})
		return len(entries) == 0
	})
	publish(t, b, "k/3")
	waitFor(t, "the released key", func() bool { return rec.handled("k/3") })
}

// The parked keys of a partition are bounded: at the bound, a message that
// would park one more key waits in its lane (other keys flow, nothing is
// dead-lettered out of order) until a redrive releases a key.
func TestParkedKeysBounded(t *testing.T) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	rec := &handling{}
	handler, fix := poisonUntilFixed(rec)
	c, _ := startConsumer(t, b, handler, WithMaxParkedKeys(2))
	publish(t, b, "a/0", "a/1", "b/0", "b/1", "c/0", "c/1", "free/0", "free/1", "free/2")
	waitFor(t, "the free key", func() bool { return rec.handled("free/2") })
	q := dlq.Open(b, "g.dlq")
	// keysIn returns the keys in the DLQ and how many entries.
	keysIn := func() (map[string]bool, int) {
		entries, _ := q.List(context.Background(), dlq.Filter{})
		keys := map[string]bool{}
		for _, e := range entries {
			keys[string(e.Original.Key)] = true
		}
		return keys, len(entries)
	}
	waitFor(t, "two parked keys", func() bool { keys, n := keysIn(); return len(keys) == 2 && n == 4 })
	time.Sleep(50 * time.Millisecond) // the third key would be dead-lettered by now without the bound
	keys, n := keysIn()
	if len(keys) != 2 || n != 4 {
		t.Fatalf("DLQ holds %d entries of keys %v: a third key was parked past the bound of 2", n, keys)
	}
	// The worker counts an entry once it followed its own write.
	waitFor(t, "2 parked keys with 2 parked messages", func() bool {
		st := c.Stats()
		return st.ParkedKeys == 2 && st.ParkedMessages == 2
	})
	var release string
	for k := range keys {
		release = k
	}
	fix(release)
	if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte(release)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the released key, then the waiting one parked", func() bool {
		keys, n := keysIn()
		return rec.handled(release+"/1") && len(keys) == 2 && n == 4 && !keys[release]
	})
	if got, want := fmt.Sprint(rec.order(release+"/")), fmt.Sprintf("[%s/0@1 %s/1@1]", release, release); got != want {
		t.Fatalf("released key handled as %s, want %s", got, want)
	}
}

// A full event stream drops and counts instead of blocking the pipeline.
func TestEventStreamNeverBlocks(t *testing.T) {
	s := NewEventStream(2)
	done := make(chan struct{})
	go func() {
		for range 5 {
			s.Observe(Event{Kind: EventHandled})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Observe blocked on a full stream")
	}
	if got := len(s.Events()); got != 2 || s.Dropped() != 3 {
		t.Fatalf("%d buffered, %d dropped; want 2 and 3", got, s.Dropped())
	}
}

// A redriven copy that fails again becomes its key's blocker, and the
// next redrive must release the key when that copy's own copy arrives.
// Redrive used to add a second ferry-redrive-of header to the copy of a
// copy, naming the first original, so the copy never matched its blocker
// and the key stayed parked for good (issue 16, defect 13).
func TestRedriveOfACopyThatFailedAgain(t *testing.T) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	rec := &handling{}
	var mu sync.Mutex
	failures := 2 // k/0, then its first copy
	handler := func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		fail := string(m.Payload) == "k/0" && failures > 0
		if fail {
			failures--
		}
		mu.Unlock()
		if fail {
			return ferry.Permanent(errors.New("poison"))
		}
		rec.record(m, Attempt(ctx))
		return nil
	}
	startConsumer(t, b, handler)
	publish(t, b, "k/0", "k/1")
	q := dlq.Open(b, "g.dlq")
	dead := func(n int) func() bool {
		return func() bool {
			entries, _ := q.List(context.Background(), dlq.Filter{})
			return len(entries) == n
		}
	}
	waitFor(t, "k/0 dead and k/1 parked", dead(2))
	if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the copy of k/0 dead again and k/1 parked again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return failures == 0 && dead(2)()
	})
	if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("k")}}); err != nil {
		t.Fatal(err)
	}
	publish(t, b, "k/2")
	waitFor(t, "the key released", func() bool { return rec.handled("k/2") })
	if got, want := fmt.Sprint(rec.order("k/")), "[k/0@1 k/1@1 k/2@1]"; got != want {
		t.Fatalf("key handled as %s, want %s", got, want)
	}
}

// At the parked-key bound, failed messages wait for room off the handler
// pool: with a bound of 1 and a pool of 2, two keys waiting for room used
// to hold both pool goroutines asleep, so neither the redriven copy that
// would free a key nor any other key could run (issue 16, defect 5). Now
// other keys flow while they wait, the copy runs, and the waiting keys
// park in turn.
func TestParkedKeyBoundDoesNotStopThePool(t *testing.T) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	rec := &handling{}
	handler, fix := poisonUntilFixed(rec)
	startConsumer(t, b, handler, WithMaxParkedKeys(1), WithConcurrency(2))
	publish(t, b, "a/0", "b/0", "c/0", "free/0", "free/1")
	waitFor(t, "the free key while two keys wait for room to park", func() bool { return rec.handled("free/1") })
	q := dlq.Open(b, "g.dlq")
	entries, err := q.List(context.Background(), dlq.Filter{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("DLQ: %d entries, %v; want the one parked key's", len(entries), err)
	}
	first := string(entries[0].Original.Key)
	fix(first)
	if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte(first)}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the redriven key handled, and the next waiting key parked", func() bool {
		entries, _ := q.List(context.Background(), dlq.Filter{})
		return rec.handled(first+"/0") && len(entries) == 1 && string(entries[0].Original.Key) != first
	})
}

// poisonUntilFixed returns a handler that fails message 0 of every key but
// "free" permanently until fix is called for its key, recording what it
// handles in rec.
func poisonUntilFixed(rec *handling) (Handler, func(key string)) {
	var mu sync.Mutex
	fixed := map[string]bool{}
	h := func(ctx context.Context, m *ferry.Message) error {
		k, s, _ := cutKey(string(m.Payload))
		mu.Lock()
		ok := fixed[k]
		mu.Unlock()
		if k != "free" && s == "0" && !ok {
			return ferry.Permanent(errors.New("poison"))
		}
		rec.record(m, Attempt(ctx))
		return nil
	}
	return h, func(key string) {
		mu.Lock()
		fixed[key] = true
		mu.Unlock()
	}
}
