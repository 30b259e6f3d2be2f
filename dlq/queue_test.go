package dlq_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/internal/memlog"
	"github.com/ferrymq/ferry/retry"
)

func setup(t *testing.T) (*embedded.Backend, *commitlog.Log) {
	t.Helper()
	return memlog.Backend(t)
}

func count(t *testing.T, l *commitlog.Log, topic string) int {
	_, end, err := l.Bounds(topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	return int(end)
}

// TestDLQRoundTrip: a consumer dead-letters poison messages and parks the
// later messages of their keys; after the bug is fixed, a redrive sends
// them back and each key's messages are handled in their original order; a
// second redrive does nothing.
func TestDLQRoundTrip(t *testing.T) {
	ctx := context.Background()
	b, l := setup(t)
	b.EnsureTopic(ctx, "orders", 1)
	for i := 0; i < 6; i++ {
		p := fmt.Sprintf("order %d", i)
		if i%2 == 1 {
			p = fmt.Sprintf("poison %d", i)
		}
		b.Publish(ctx, &ferry.Message{Topic: "orders", Key: []byte(fmt.Sprint("c", i%3)), Payload: []byte(p)})
	}
	var mu sync.Mutex
	fixed := false
	handled := map[string][]string{} // key -> payloads in handling order
	finished := make(chan struct{}, 100)
	run := func(until int) {
		c, err := consumer.New(b, "billing", []string{"orders"}, func(ctx context.Context, m *ferry.Message) error {
			mu.Lock()
			defer mu.Unlock()
			if !fixed && string(m.Payload[:6]) == "poison" {
				return ferry.Permanent(errors.New("bug in billing"))
			}
			handled[string(m.Key)] = append(handled[string(m.Key)], string(m.Payload))
			return nil
		}, consumer.WithObserver(func(e consumer.Event) {
			if e.Kind == consumer.EventHandled || e.Kind == consumer.EventDeadLettered {
				finished <- struct{}{}
			}
		}))
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		for i := 0; i < until; i++ {
			<-finished
		}
		cancel()
		<-done
	}
	run(6)
	q := dlq.Open(b, "billing.dlq")
	dead, err := q.List(ctx, dlq.Filter{})
	// Three poison messages, and order 4 parked behind poison 1 (key c1).
	if err != nil || len(dead) != 4 {
		t.Fatalf("dead entries: %d, %v", len(dead), err)
	}
	var e dlq.Entry
	for _, d := range dead {
		if string(d.Original.Payload) == "poison 1" {
			e = d
		}
	}
	if e.Record == nil {
		t.Fatalf("no entry for poison 1")
	}
	if e.Class != retry.ClassPermanent || e.Attempts != 1 || e.Original.Topic != "orders" || string(e.Original.Payload) != "poison 1" || e.Group != "billing" {
		t.Fatalf("entry metadata: %+v topic %q payload %q", e, e.Original.Topic, e.Original.Payload)
	}
	if got, err := q.Get(ctx, e.Original.ID); err != nil || got.Record.Offset != e.Record.Offset {
		t.Fatalf("get: %+v %v", got, err)
	}
	if only, _ := q.List(ctx, dlq.Filter{Key: []byte("c2")}); len(only) != 1 {
		t.Fatalf("filter by key: %d entries", len(only))
	}

	mu.Lock()
	fixed = true
	mu.Unlock()
	var progress []string
	n, err := q.Redrive(ctx, dlq.RedriveOpts{PerSecond: 1000, Progress: func(done, total int) { progress = append(progress, fmt.Sprintf("%d/%d", done, total)) }})
	if err != nil || n != 4 {
		t.Fatalf("redrive: %d, %v", n, err)
	}
	if fmt.Sprint(progress) != "[1/4 2/4 3/4 4/4]" {
		t.Fatalf("progress %v", progress)
	}
	before := count(t, l, "orders")
	if n, err := q.Redrive(ctx, dlq.RedriveOpts{}); err != nil || n != 0 || count(t, l, "orders") != before {
		t.Fatalf("second redrive: %d redriven, %v, orders %d -> %d", n, err, before, count(t, l, "orders"))
	}
	run(4)
	mu.Lock()
	defer mu.Unlock()
	// Per key, the original order: c0 = 0, 3; c1 = 1, 4; c2 = 2, 5.
	want := map[string][]string{"c0": {"order 0", "poison 3"}, "c1": {"poison 1", "order 4"}, "c2": {"order 2", "poison 5"}}
	if fmt.Sprint(handled) != fmt.Sprint(want) {
		t.Fatalf("handled %v, want %v", handled, want)
	}
	if left, _ := q.List(ctx, dlq.Filter{}); len(left) != 0 {
		t.Fatalf("%d entries still dead after redrive", len(left))
	}
}

func TestPurgeAndFilters(t *testing.T) {
	ctx := context.Background()
	b, _ := setup(t)
	b.EnsureTopic(ctx, "g.dlq", 1)
	now := time.Now()
	classes := []retry.Class{retry.ClassPermanent, retry.ClassDecode, retry.ClassPanic, retry.ClassDecode}
	for i, c := range classes {
		m := &ferry.Message{ID: ferry.NewID(), Topic: "orders", Key: []byte("k"), Payload: []byte(fmt.Sprint(i)), Time: now}
		entry := dlq.NewEntry(m, "g.dlq", dlq.Failure{Group: "g", Attempts: 1, First: now, Last: now.Add(time.Duration(i) * time.Hour), Err: errors.New("x"), Class: c})
		if err := b.Publish(ctx, entry); err != nil {
			t.Fatal(err)
		}
	}
	q := dlq.Open(b, "g.dlq")
	if got, _ := q.List(ctx, dlq.Filter{Class: retry.ClassDecode}); len(got) != 2 {
		t.Fatalf("decode entries: %d", len(got))
	}
	if got, _ := q.List(ctx, dlq.Filter{Since: now.Add(90 * time.Minute)}); len(got) != 2 {
		t.Fatalf("entries since 90m: %d", len(got))
	}
	if n, err := q.Purge(ctx, dlq.Filter{Class: retry.ClassDecode}); err != nil || n != 2 {
		t.Fatalf("purge: %d %v", n, err)
	}
	left, _ := q.List(ctx, dlq.Filter{})
	if len(left) != 2 || left[0].Class != retry.ClassPermanent || left[1].Class != retry.ClassPanic {
		t.Fatalf("after purge: %+v", left)
	}
	if _, err := q.Get(ctx, ferry.NewID()); !errors.Is(err, dlq.ErrNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if _, err := q.Redrive(ctx, dlq.RedriveOpts{PerSecond: -1}); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("negative rate: %v", err)
	}
}

// A redrive moves whole keys, but a key is one group's: two groups that
// share a DLQ topic park the same key apart, and redriving one group's
// entries must not send the other's along (it would release, or
// duplicate, what the other group still holds parked).
func TestRedriveKeepsGroupsApart(t *testing.T) {
	ctx := context.Background()
	b, _ := setup(t)
	for _, tp := range []string{"orders", "shared.dlq"} {
		if err := b.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	q := dlq.Open(b, "shared.dlq")
	for _, g := range []string{"billing", "shipping"} {
		m := &ferry.Message{ID: ferry.NewID(), Topic: "orders", Key: []byte("k"), Payload: []byte(g)}
		e := dlq.NewEntry(m, "shared.dlq", dlq.Failure{Group: g, Handler: "h", Attempts: 1, First: time.Now(), Last: time.Now(), Err: errors.New("poison"), Class: retry.ClassPermanent})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	all, err := q.List(ctx, dlq.Filter{})
	if err != nil || len(all) != 2 {
		t.Fatalf("setup: %d entries, %v", len(all), err)
	}
	var billing ferry.ID
	for _, e := range all {
		if e.Group == "billing" {
			billing = e.Original.ID
		}
	}
	n, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: dlq.Filter{IDs: []ferry.ID{billing}}})
	if err != nil || n != 1 {
		t.Fatalf("redrive of billing's entry moved %d entries (%v), want 1: shipping's entry of the same key went along", n, err)
	}
	left, _ := q.List(ctx, dlq.Filter{State: dlq.StateDead})
	if len(left) != 1 || left[0].Group != "shipping" {
		t.Fatalf("left dead in the DLQ: %v, want shipping's entry", left)
	}
	if req, _ := q.List(ctx, dlq.Filter{State: dlq.StateRequested}); len(req) != 1 || req[0].Group != "billing" {
		t.Fatalf("requested: %v, want billing's entry", req)
	}
}

// A record in a DLQ topic that is not a dead letter (produced there by
// hand, or by another program) is not an entry: listing, redrive and the
// owner's index skip it, and the entries around it work as ever.
func TestForeignRecordsInADLQTopicAreSkipped(t *testing.T) {
	ctx := context.Background()
	b, _ := setup(t)
	for _, tp := range []string{"orders", "billing.dlq"} {
		if err := b.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	foreign := func(payload string) {
		t.Helper()
		if err := b.Publish(ctx, &ferry.Message{Topic: "billing.dlq", Key: []byte("k"), Payload: []byte(payload),
			Headers: []ferry.Header{{Key: dlq.HeaderOriginalID, Value: []byte("not an ID")}}}); err != nil {
			t.Fatal(err)
		}
	}
	foreign("before")
	m := &ferry.Message{ID: ferry.NewID(), Topic: "orders", Key: []byte("k"), Payload: []byte("poison")}
	e := dlq.NewEntry(m, "billing.dlq", dlq.Failure{Group: "billing", Handler: "h", Attempts: 1, First: time.Now(), Last: time.Now(), Err: errors.New("poison"), Class: retry.ClassPermanent})
	if err := b.Publish(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, &ferry.Message{Topic: "billing.dlq", Payload: []byte("no headers at all")}); err != nil {
		t.Fatal(err)
	}
	foreign("after")
	q := dlq.Open(b, "billing.dlq")
	all, err := q.List(ctx, dlq.Filter{})
	if err != nil || len(all) != 1 || all[0].Original.ID != m.ID {
		t.Fatalf("list beside foreign records: %v, %v; want the one entry", all, err)
	}
	x := dlq.NewIndex(b, "billing.dlq")
	if err := x.CatchUp(ctx); err != nil || !x.Known("billing", m.ID) {
		t.Fatalf("the owner's index beside foreign records: %v, known %v", err, x.Known("billing", m.ID))
	}
	if n, err := q.Redrive(ctx, dlq.RedriveOpts{}); err != nil || n != 1 {
		t.Fatalf("redrive beside foreign records: %d, %v; want 1", n, err)
	}
	if req, err := q.List(ctx, dlq.Filter{State: dlq.StateRequested}); err != nil || len(req) != 1 {
		t.Fatalf("requested after the redrive: %v, %v", req, err)
	}
}

// A move (To) leaves a key with a requested entry whole to its owner,
// which may be handling it: moving it too would handle it twice. Other
// keys move; IncludeRequested moves the requested keys as well.
func TestMoveLeavesRequestedKeysToTheirOwner(t *testing.T) {
	ctx := context.Background()
	b, _ := setup(t)
	for _, tp := range []string{"orders", "billing.dlq", "orders.retry"} {
		if err := b.EnsureTopic(ctx, tp, 1); err != nil {
			t.Fatal(err)
		}
	}
	q := dlq.Open(b, "billing.dlq")
	deadLetter := func(key, payload string, class retry.Class) ferry.ID {
		t.Helper()
		m := &ferry.Message{ID: ferry.NewID(), Topic: "orders", Key: []byte(key), Payload: []byte(payload)}
		e := dlq.NewEntry(m, "billing.dlq", dlq.Failure{Group: "billing", Handler: "h", Attempts: 1, First: time.Now(), Last: time.Now(), Err: errors.New("poison"), Class: class})
		if err := b.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		return m.ID
	}
	first := deadLetter("k", "k/0", retry.ClassPermanent)
	if n, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: dlq.Filter{IDs: []ferry.ID{first}}}); err != nil || n != 1 {
		t.Fatalf("request k/0: %d, %v", n, err)
	}
	deadLetter("k", "k/1", dlq.ClassParked) // parked behind the requested one
	other := deadLetter("j", "j/0", retry.ClassPermanent)
	n, err := q.Redrive(ctx, dlq.RedriveOpts{To: "orders.retry"})
	if err != nil || n != 1 {
		t.Fatalf("move: %d moved (%v), want 1: j's entry, not k's", n, err)
	}
	if moved, _ := q.List(ctx, dlq.Filter{State: dlq.StateRedriven}); len(moved) != 1 || moved[0].Original.ID != other {
		t.Fatalf("moved: %v, want j/0 only", moved)
	}
	if n, err := q.Redrive(ctx, dlq.RedriveOpts{To: "orders.retry", IncludeRequested: true}); err != nil || n != 2 {
		t.Fatalf("move with IncludeRequested: %d, %v; want k/0 and k/1", n, err)
	}
	if left, _ := q.List(ctx, dlq.Filter{}); len(left) != 0 {
		t.Fatalf("left after both moves: %v", left)
	}
}
