package consumer

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/internal/memlog"
	"github.com/ferrymq/ferry/retry"
)

func newBackend(t testing.TB) *embedded.Backend {
	t.Helper()
	b := embedded.New(memlog.Open(t, commitlog.WithDurability(commitlog.DurabilityNone)), embedded.WithSessionTimeout(2*time.Second))
	t.Cleanup(func() { b.Close() })
	return b
}

// produce writes n messages over keys, payload "key/seq" with seq
// increasing per key.
func produce(t *testing.T, b backend.Backend, topic string, partitions, keys, n int) []*ferry.Message {
	t.Helper()
	ctx := context.Background()
	if err := b.EnsureTopic(ctx, topic, partitions); err != nil {
		t.Fatal(err)
	}
	seq := map[string]int{}
	var out []*ferry.Message
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("k%02d", i%keys)
		m := &ferry.Message{Topic: topic, Key: []byte(k), Payload: []byte(fmt.Sprintf("%s/%d", k, seq[k]))}
		seq[k]++
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

func seqOf(m *ferry.Message) (string, int) {
	k, s, _ := strings.Cut(string(m.Payload), "/")
	n, _ := strconv.Atoi(s)
	return k, n
}

// checker records every handler invocation and checks G2 and G3 as they
// happen: a key never runs twice at once, and a key's message starts only
// after every earlier message of that key was handled or dead-lettered.
type checker struct {
	mu         sync.Mutex
	active     map[string]string       // key -> member running it
	completed  map[string]map[int]bool // key -> seqs handled or dead-lettered
	handled    map[ferry.ID]int
	dead       map[ferry.ID]int
	violations []string
	events     int
	notify     chan int
	outageLeft int              // runOutage: failures the outage still had to give
	firstOrder map[string][]int // key -> seqs in the order they were first handled
	handledSeq map[string]map[int]bool
}

func newChecker() *checker {
	return &checker{active: map[string]string{}, completed: map[string]map[int]bool{}, handled: map[ferry.ID]int{}, dead: map[ferry.ID]int{},
		notify: make(chan int, 1<<16), firstOrder: map[string][]int{}, handledSeq: map[string]map[int]bool{}}
}

func (c *checker) observe(e Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, seq := seqOf(e.Message)
	switch e.Kind {
	case EventStarted:
		if who, busy := c.active[k]; busy {
			c.violations = append(c.violations, fmt.Sprintf("key %s seq %d started on %s while running on %s", k, seq, e.Member, who))
		}
		for s := 0; s < seq; s++ {
			if !c.completed[k][s] {
				c.violations = append(c.violations, fmt.Sprintf("key %s seq %d started before seq %d finished", k, seq, s))
				break
			}
		}
		c.active[k] = e.Member
	case EventHandled, EventDeadLettered:
		delete(c.active, k)
		if c.completed[k] == nil {
			c.completed[k] = map[int]bool{}
		}
		c.completed[k][seq] = true
		if e.Kind == EventHandled {
			c.handled[e.Message.ID]++
			if c.handledSeq[k] == nil {
				c.handledSeq[k] = map[int]bool{}
			}
			if !c.handledSeq[k][seq] {
				c.handledSeq[k][seq] = true
				c.firstOrder[k] = append(c.firstOrder[k], seq)
			}
		} else {
			c.dead[e.Message.ID]++
		}
		c.events++
		select {
		case c.notify <- c.events:
		default:
		}
	case EventRetried, EventAbandoned:
		delete(c.active, k)
	}
}

// allHandled reports whether every message was handled, itself or through
// a redriven copy (same key and sequence).
func (c *checker) allHandled(msgs []*ferry.Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		k, seq := seqOf(m)
		if !c.handledSeq[k][seq] {
			return false
		}
	}
	return true
}

func (c *checker) finished(msgs []*ferry.Message) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range msgs {
		if c.handled[m.ID] == 0 && c.dead[m.ID] == 0 {
			return false
		}
	}
	return true
}

// fate decides deterministically what the handler does with a message on
// an attempt, so a redelivered message meets the same fate.
func fate(m *ferry.Message, attempt int) int {
	h := fnv.New32a()
	h.Write(m.ID[:])
	h.Write([]byte{byte(attempt)})
	return int(h.Sum32() % 100)
}

// bugFixed, once set, makes faultyHandler succeed (the fix before a redrive).
var bugFixed atomic.Bool

func faultyHandler(ctx context.Context, m *ferry.Message) error {
	if bugFixed.Load() {
		return nil
	}
	switch f := fate(m, Attempt(ctx)); {
	case f < 3:
		return ferry.Permanent(errors.New("poison message"))
	case f < 15:
		return errors.New("dependency hiccup")
	case f < 18:
		panic("handler bug")
	case f < 20:
		<-ctx.Done() // hangs past the attempt timeout
		return ctx.Err()
	}
	return nil
}

// TestCheckerUnderFaultsAndRebalances runs consumers that join and leave
// while the handler fails at random (transient errors, panics, timeouts,
// poison messages) and checks every invocation: no message lost, no key
// processed concurrently, per-key order held through retries and the DLQ.
func TestCheckerUnderFaultsAndRebalances(t *testing.T) {
	b := newBackend(t)
	msgs := produce(t, b, "in", 4, 40, 1200)
	chk := newChecker()
	policy := retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxAttempts: 4, AttemptTimeout: 20 * time.Millisecond}
	start := func(name string) (context.CancelFunc, chan error) {
		c, err := New(b, "g", []string{"in"}, faultyHandler, WithMember(name), WithConcurrency(8), WithRetryPolicy(policy),
			WithObserver(chk.observe), WithCommitInterval(10*time.Millisecond), WithHeartbeatInterval(50*time.Millisecond), WithSeed(1))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c.Run(ctx) }()
		return cancel, done
	}
	stopA, doneA := start("a")
	stopB, doneB := start("b")
	// Membership changes at fixed points of progress, not at fixed times.
	stopC, doneC := func() (context.CancelFunc, chan error) { waitEvents(t, chk, 200); return start("c") }()
	waitEvents(t, chk, 400)
	stopA()
	if err := <-doneA; err != nil {
		t.Fatalf("consumer a: %v", err)
	}
	waitEvents(t, chk, 700)
	stopD, doneD := start("d")
	waitEvents(t, chk, 900)
	stopB()
	if err := <-doneB; err != nil {
		t.Fatalf("consumer b: %v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !chk.finished(msgs) {
		if time.Now().After(deadline) {
			t.Fatalf("not every message was handled or dead-lettered within a minute: %d events", chk.events)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Phase 2: fix the bug and redrive the DLQ while c and d run. Every
	// key must then have been handled in its original order, the messages
	// parked behind a dead letter included.
	bugFixed.Store(true)
	defer bugFixed.Store(false)
	if _, err := dlq.Open(b, "g.dlq").Redrive(context.Background(), dlq.RedriveOpts{}); err != nil {
		t.Fatal(err)
	}
	// Every message handled is not enough: a copy of a message handled
	// before (a duplicate in the at-least-once sense) may still wait in
	// the DLQ, and the consumers must not stop before they resolved it.
	q := dlq.Open(b, "g.dlq")
	unresolved := func() int {
		es, err := q.List(context.Background(), dlq.Filter{})
		if err != nil {
			t.Fatal(err)
		}
		return len(es)
	}
	deadline = time.Now().Add(60 * time.Second)
	for !chk.allHandled(msgs) || unresolved() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("redriven messages not all handled within a minute (%d DLQ entries unresolved)", unresolved())
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopC()
	stopD()
	<-doneC
	<-doneD

	chk.mu.Lock()
	defer chk.mu.Unlock()
	for _, v := range chk.violations {
		t.Error(v)
	}
	for k, seqs := range chk.firstOrder {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] < seqs[i-1] {
				t.Errorf("key %s handled out of order across the DLQ and redrive: %v", k, seqs)
				break
			}
		}
	}
	redriven := 0
	// The DLQ holds each dead letter once, with why it failed.
	deadLetters := readTopic(t, b, "g.dlq")
	seen := map[string]bool{}
	states := map[string][]string{} // original ID -> its markers' states, in order
	newest := map[string]int{}      // key -> the newest seq dead-lettered so far, in DLQ order
	for _, d := range deadLetters {
		if state, marker := d.Header(dlq.HeaderState); marker {
			orig, _ := d.Header(dlq.HeaderOriginalID)
			states[string(orig)] = append(states[string(orig)], string(state))
			if string(state) == dlq.StateRedriven {
				redriven++
			}
			continue
		}
		orig, _ := d.Header(dlq.HeaderOriginalID)
		if seen[string(orig)] {
			t.Errorf("message %s dead-lettered twice", orig)
		}
		// A key's entries are in its order: a copy of a message behind a
		// newer one of its key would be handled again after it.
		if k, seq := seqOf(d); seq < newest[k] {
			t.Errorf("key %s: seq %d dead-lettered (DLQ offset %d) behind seq %d", k, seq, d.Offset, newest[k])
		} else {
			newest[k] = seq
		}
		seen[string(orig)] = true
		class, _ := d.Header(dlq.HeaderClass)
		attempts, _ := d.Header(dlq.HeaderAttempts)
		if _, ok := d.Header(dlq.HeaderTopic); !ok || len(class) == 0 || len(attempts) == 0 {
			t.Errorf("dead letter without metadata: %+v", d.Headers)
		}
		if string(class) == string(retry.ClassPanic) {
			if stack, _ := d.Header(dlq.HeaderStack); !strings.Contains(string(stack), "faultyHandler") {
				t.Errorf("panic dead letter without the handler's stack")
			}
		}
	}
	if len(seen) != len(chk.dead) || redriven != len(seen) {
		t.Errorf("DLQ holds %d entries (%d redriven), %d messages were dead-lettered", len(seen), redriven, len(chk.dead))
		for _, d := range deadLetters {
			if _, marker := d.Header(dlq.HeaderState); marker {
				continue
			}
			orig, _ := d.Header(dlq.HeaderOriginalID)
			if ss := states[string(orig)]; len(ss) == 0 || ss[len(ss)-1] != dlq.StateRedriven {
				class, _ := d.Header(dlq.HeaderClass)
				id, _ := ferry.ParseID(string(orig))
				k, seq := seqOf(d)
				t.Errorf("  entry of %s (key %s seq %d, class %s, at DLQ offset %d): markers %v; handled %d times, dead-lettered %d times", orig, k, seq, class, d.Offset, ss, chk.handled[id], chk.dead[id])
			}
		}
	}
	if len(chk.dead) == 0 || len(chk.handled) == 0 {
		t.Errorf("test exercised nothing: %d handled, %d dead", len(chk.handled), len(chk.dead))
	}
	t.Logf("%d messages: %d handled, %d dead-lettered (then redriven)", len(msgs), len(chk.handled), len(chk.dead))
}

func waitEvents(t *testing.T, chk *checker, n int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case got := <-chk.notify:
			if got >= n {
				return
			}
		case <-deadline:
			t.Fatalf("progress stalled before %d events", n)
		}
	}
}

func readTopic(t *testing.T, b *embedded.Backend, topic string) []*ferry.Message {
	t.Helper()
	info, err := b.Log().Topic(topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []*ferry.Message
	for p, pi := range info.Partitions {
		for off := pi.Start; off < pi.End; {
			res, err := b.Log().Read(topic, int32(p), off, commitlog.ReadOpts{})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, res.Messages...)
			off = res.Next
		}
	}
	return out
}

// TestBackpressureBoundsBuffers gives a slow handler a large backlog: the
// messages the consumer holds stay within its limits (counted, not timed).
func TestBackpressureBoundsBuffers(t *testing.T) {
	b := newBackend(t)
	produce(t, b, "in", 2, 1000, 5000)
	release := make(chan struct{})
	var handled sync.WaitGroup
	handled.Add(5000)
	c, err := New(b, "g", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		handled.Done()
		return nil
	}, WithConcurrency(4), WithMaxBuffered(50))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	// Wait until every slot is busy: from then on the fetch loops stall on
	// a slot, so the backlog stays in the log and not in memory.
	for c.Stats().InFlight < 4 {
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		if st := c.Stats(); st.Buffered > 2*50 || st.InFlight > 4 {
			t.Fatalf("buffers exceed their limits: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
	if st := c.Stats(); st.Buffered == 0 || st.Partitions != 2 {
		t.Fatalf("consumer holds nothing: %+v", st)
	}
	close(release)
	handled.Wait()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// runOutage consumes 300 messages while a dependency is down for the
// first 200 calls, and returns the checker once every message finished.
func runOutage(t *testing.T, opts ...Opt) *checker {
	b := newBackend(t)
	msgs := produce(t, b, "in", 2, 20, 300)
	var mu sync.Mutex
	failuresLeft := 200 // the outage: the next 200 calls fail
	chk := newChecker()
	opts = append([]Opt{WithConcurrency(8), WithObserver(chk.observe),
		WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxAttempts: 3})}, opts...)
	c, err := New(b, "g", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if failuresLeft > 0 {
			failuresLeft--
			return errors.New("payments API unavailable")
		}
		return nil
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	deadline := time.Now().Add(60 * time.Second)
	for !chk.finished(msgs) {
		if time.Now().After(deadline) {
			t.Fatal("messages not finished after the outage")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	chk.outageLeft = failuresLeft
	return chk
}

// TestBreakerPausesInsteadOfDeadLettering takes a dependency down for a
// while: with the breaker at its default threshold (derived from the
// policy's 3 attempts), nothing is dead-lettered and every message is
// handled once it comes back.
func TestBreakerPausesInsteadOfDeadLettering(t *testing.T) {
	chk := runOutage(t, WithCircuitBreaker(BreakerSettings{OpenFor: 5 * time.Millisecond}))
	chk.mu.Lock()
	defer chk.mu.Unlock()
	if len(chk.dead) != 0 {
		t.Fatalf("%d messages dead-lettered during a dependency outage", len(chk.dead))
	}
	if chk.outageLeft != 0 {
		t.Fatalf("outage not exercised: %d failures left", chk.outageLeft)
	}
	for _, v := range chk.violations {
		t.Error(v)
	}
}

// Without the breaker, the same outage dead-letters messages: the test
// above is not passing by accident.
func TestOutageWithoutBreakerDeadLetters(t *testing.T) {
	chk := runOutage(t)
	chk.mu.Lock()
	defer chk.mu.Unlock()
	if len(chk.dead) == 0 {
		t.Fatal("an outage without a breaker should have dead-lettered messages")
	}
}

// TestTypedHandlerDeadLettersUndecodable: a payload that does not decode
// goes to the DLQ once, as class "decode", and the others are handled.
func TestTypedHandlerDeadLettersUndecodable(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	b.EnsureTopic(ctx, "orders", 1)
	type order struct {
		Total int `json:"total"`
	}
	for i, p := range []string{`{"total":1}`, `not json`, `{"total":3}`} {
		if err := b.Publish(ctx, &ferry.Message{Topic: "orders", Key: []byte(fmt.Sprint("c", i)), Payload: []byte(p)}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var totals []int
	calls := 0
	chk := make(chan Event, 16)
	c, err := New(b, "g", []string{"orders"}, JSON(func(ctx context.Context, m *ferry.Message, o order) error {
		mu.Lock()
		defer mu.Unlock()
		totals = append(totals, o.Total)
		return nil
	}), WithObserver(func(e Event) {
		if e.Kind == EventStarted {
			mu.Lock()
			calls++
			mu.Unlock()
		}
		if e.Kind == EventHandled || e.Kind == EventDeadLettered {
			chk <- e
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	var dead []Event
	for i := 0; i < 3; i++ {
		if e := <-chk; e.Kind == EventDeadLettered {
			dead = append(dead, e)
		}
	}
	cancel()
	<-done
	if len(dead) != 1 || dead[0].Class != retry.ClassDecode || string(dead[0].Message.Payload) != "not json" {
		t.Fatalf("dead letters: %+v", dead)
	}
	if calls != 3 {
		t.Fatalf("%d attempts for 3 messages: a decode failure must not be retried", calls)
	}
	sort.Ints(totals) // different keys: no order between them
	if fmt.Sprint(totals) != "[1 3]" {
		t.Fatalf("handled totals %v", totals)
	}
}

// TestIdempotentMiddlewareSkipsSeen: a message whose ID the store has seen
// is not handled again (as after a redelivery); user middleware wraps in
// the order given, the first outermost.
func TestIdempotentMiddlewareSkipsSeen(t *testing.T) {
	b := newBackend(t)
	msgs := produce(t, b, "in", 1, 5, 10)
	store := idempotency.NewMemory(time.Hour, 1000)
	store.Mark(context.Background(), msgs[3].ID) // processed before a crash
	var mu sync.Mutex
	var handled []ferry.ID
	var order []string
	trace := func(name string) Middleware {
		return func(next Handler) Handler {
			return func(ctx context.Context, m *ferry.Message) error {
				mu.Lock()
				if m == msgs[0] || m.ID == msgs[0].ID {
					order = append(order, name)
				}
				mu.Unlock()
				return next(ctx, m)
			}
		}
	}
	finished := make(chan struct{}, 20)
	c, err := New(b, "g", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		handled = append(handled, m.ID)
		mu.Unlock()
		return nil
	}, WithMiddleware(trace("outer"), Idempotent(store), trace("inner")),
		WithObserver(func(e Event) {
			if e.Kind == EventHandled {
				finished <- struct{}{}
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for i := 0; i < 10; i++ {
		<-finished
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 9 {
		t.Fatalf("handled %d messages, want 9 (one was already processed)", len(handled))
	}
	for _, id := range handled {
		if id == msgs[3].ID {
			t.Fatal("already-processed message handled again")
		}
	}
	for _, m := range msgs {
		if seen, _ := store.Seen(context.Background(), m.ID); !seen {
			t.Fatalf("message %s not marked processed", m.ID)
		}
	}
	if fmt.Sprint(order) != "[outer inner]" {
		t.Fatalf("middleware order %v", order)
	}
}

// TestStuckMessageBoundsPending: one message retries for a long time while
// the rest of its partition flows; the finished messages held behind it
// (they cannot be committed past it) stay bounded, and fetching pauses.
func TestStuckMessageBoundsPending(t *testing.T) {
	b := newBackend(t)
	ctx := context.Background()
	b.EnsureTopic(ctx, "in", 1)
	stuck := &ferry.Message{Topic: "in", Key: []byte("stuck"), Payload: []byte("stuck/0")}
	b.Publish(ctx, stuck)
	produce(t, b, "in", 1, 100, 3000) // other keys, behind it
	release := make(chan struct{})
	c, err := New(b, "g", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		if m.ID == stuck.ID {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}, WithMaxBuffered(10), WithConcurrency(4))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	// Wait until the partition has fetched up to the bound, then check it
	// stays there while the stuck message holds the watermark.
	deadline := time.Now().Add(30 * time.Second)
	for c.Stats().Pending < 64*10 {
		if time.Now().After(deadline) {
			t.Fatalf("pending never reached the bound: %+v", c.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		if st := c.Stats(); st.Pending > 64*10 {
			t.Fatalf("pending %d exceeds the bound of %d", st.Pending, 64*10)
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	for c.Stats().Pending > 0 || c.Stats().Buffered > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("did not drain after release: %+v", c.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
}
