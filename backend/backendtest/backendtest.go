// Package backendtest is the conformance suite every ferry backend runs,
// in the spirit of database/sql driver tests: publish and fetch, order per
// partition, key-to-partition mapping, producer dedup, replay from offset
// and time, consumer groups (join, leave, rebalance, resume, fencing),
// the runtime's DLQ round trip with parked keys and redrive, atomic
// publish-and-commit and exactly-once consume-transform-produce where
// supported, a server outage under load, the runtime's seeded simulation
// (Simulate) where the harness gives it a world, and the operator's
// operations (backend.Admin, and backend.TopicAlterer and backend.GroupDeleter)
// where the backend has them.
//
// A backend's test calls Run with a Harness:
//
//	func TestConformance(t *testing.T) {
//		backendtest.Run(t, backendtest.Harness{New: func(t *testing.T) backend.Backend { ... }})
//	}
package backendtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/retry"
)

// Harness adapts a backend to the suite.
type Harness struct {
	// New returns a backend with nothing in it (a fresh namespace), closed
	// by the harness when t ends.
	New func(t *testing.T) backend.Backend
	// Outage, if set, takes the server away from every backend New made
	// and returns a function that brings it back (same data). The suite
	// then checks that nothing acknowledged is lost and that the runtime
	// pauses rather than dead-letters.
	Outage func(t *testing.T) (restore func())
	// NoIDDedup declares that the backend cannot drop a publish whose
	// message ID it stored before (Kafka: its idempotent producer only
	// removes its own retries). The Dedup test is skipped with this
	// reason, which the backend's documentation must state too.
	NoIDDedup string
	// NoDedupReport declares that the backend drops a publish whose ID it
	// stored before but cannot tell the publisher which were dropped
	// (Kafka against ferry serve: the protocol has no such answer), so it
	// does not implement backend.DedupPublisher; the reason is the skip's.
	NoDedupReport string
	// Simulation, if set, is the world in which the Simulation test runs
	// Simulate's seeded scenarios (skipped without it).
	Simulation *SimWorld
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"PublishFetch", testPublishFetch},
		{"ConcurrentFetchesOfOnePartition", testConcurrentFetches},
		{"KeyToPartition", testKeyToPartition},
		{"Dedup", testDedup},
		{"BrowseIncludesDelayed", testBrowse},
		{"ReplayFromOffsetAndTime", testReplay},
		{"GroupRebalanceResumeFence", testGroup},
		{"SessionLease", testLease},
		{"BadInput", testBadInput},
		{"RuntimeOrderAcrossMembers", testRuntimeOrder},
		{"RuntimeDLQParkedRedrive", testDLQRoundTrip},
		{"RuntimeRedriveOperations", testRedriveOperations},
		{"RuntimeDurableRetry", testDurableRetry},
		{"AtomicPublishCommit", testAtomic},
		{"RuntimeExactlyOnce", testExactlyOnce},
		{"Outage", testOutage},
		{"Simulation", testSimulation},
		{"Admin", testAdmin},
		{"AdminAlterTopic", testAdminAlterTopic},
		{"AdminDeleteGroup", testAdminDeleteGroup},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func ensure(t *testing.T, b backend.Backend, topic string, n int) {
	t.Helper()
	if err := b.EnsureTopic(ctxFor(t), topic, n); err != nil {
		t.Fatalf("EnsureTopic(%s, %d): %v", topic, n, err)
	}
}

func msg(topic, key string, seq int) *ferry.Message {
	return &ferry.Message{ID: ferry.NewID(), Topic: topic, Key: []byte(key), Payload: []byte(key + ":" + strconv.Itoa(seq))}
}

func seqOf(m *ferry.Message) (string, int) {
	k, s, _ := strings.Cut(string(m.Payload), ":")
	n, _ := strconv.Atoi(s)
	return k, n
}

// readAll reads a partition from offset to its end.
func readAll(t *testing.T, b backend.Backend, tp backend.TopicPartition, from uint64) []*ferry.Message {
	t.Helper()
	ctx := ctxFor(t)
	_, end, err := b.Bounds(ctx, tp)
	if err != nil {
		t.Fatal(err)
	}
	var out []*ferry.Message
	for off := from; off < end; {
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := b.Fetch(fctx, tp, off, 100)
		cancel()
		if err != nil {
			t.Fatalf("Fetch %s/%d@%d (end %d): %v", tp.Topic, tp.Partition, off, end, err)
		}
		for _, m := range res.Messages {
			if m.Offset < off {
				t.Fatalf("Fetch from %d returned offset %d", off, m.Offset)
			}
		}
		out = append(out, res.Messages...)
		off = res.Next
	}
	return out
}

// testBrowse: a consumer's Fetch stops at a delayed message; a Browse
// (backend.Browser, for an operator) reads past it at once, the delayed
// message with its NotBefore, in offset order.
func testBrowse(t *testing.T, h Harness) {
	b := h.New(t)
	br, ok := b.(backend.Browser)
	if !ok {
		t.Skip("the backend does not implement backend.Browser")
	}
	ctx := ctxFor(t)
	ensure(t, b, "browse", 1)
	later := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	ms := []*ferry.Message{msg("browse", "k", 0), msg("browse", "k", 1), msg("browse", "k", 2)}
	ms[1].NotBefore = later
	if err := b.Publish(ctx, ms...); err != nil {
		t.Fatal(err)
	}
	tp := backend.TopicPartition{Topic: "browse", Partition: 0}
	fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	f, _ := b.Fetch(fctx, tp, 0, 10)
	cancel()
	for _, m := range f.Messages {
		if m.Offset >= 1 {
			t.Fatalf("Fetch returned offset %d, at or past a message delayed for an hour", m.Offset)
		}
	}
	var got []*ferry.Message
	for off := uint64(0); off < 3; {
		// Browse must not wait for the delayed message: a deadline far
		// below its hour, but no test of speed.
		bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := br.Browse(bctx, tp, off, 10)
		cancel()
		if err != nil {
			t.Fatalf("Browse at %d: %v", off, err)
		}
		if res.Next <= off {
			t.Fatalf("Browse at %d did not move on (next %d)", off, res.Next)
		}
		got = append(got, res.Messages...)
		off = res.Next
	}
	if len(got) != 3 || string(got[1].Payload) != "k:1" || !got[1].NotBefore.Equal(later) || string(got[2].Payload) != "k:2" {
		t.Fatalf("Browse read %d messages (%v), want k:0, k:1 delayed until %s, k:2", len(got), got, later)
	}
}

// testConcurrentFetches reads one partition twice at once: one fetch
// waits at the end for new messages (a consumer, or a DLQ follower),
// another reads from the start (a second group, a DLQ scan). The second
// must not wait for the first (backends that shared one reader per
// partition held it through the first's wait: issue 16, defect 12).
func testConcurrentFetches(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "cf", 1)
	for i := range 5 {
		if err := b.Publish(ctx, msg("cf", "k", i)); err != nil {
			t.Fatal(err)
		}
	}
	tp := backend.TopicPartition{Topic: "cf", Partition: 0}
	_, end, err := b.Bounds(ctx, tp)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, stopWaiting := context.WithCancel(ctx)
	waiting := make(chan error, 1)
	go func() {
		_, err := b.Fetch(waitCtx, tp, end, 10) // nothing there: waits
		waiting <- err
	}()
	defer func() { stopWaiting(); <-waiting }()
	for range 3 {
		// Bounded so that a fetch stuck behind the waiting one fails the
		// test instead of hanging it (the waiting one never ends by
		// itself).
		rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		res, err := b.Fetch(rctx, tp, 0, 10)
		cancel()
		if err != nil || len(res.Messages) != 5 {
			t.Fatalf("a fetch from the start beside one waiting at the end: %d messages, %v", len(res.Messages), err)
		}
	}
	select {
	case err := <-waiting:
		t.Fatalf("the fetch waiting at the end returned: %v", err)
	default:
	}
}

func testPublishFetch(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "pf", 3)
	var sent []*ferry.Message
	for i := range 60 {
		m := msg("pf", fmt.Sprintf("k%d", i%7), i)
		m.Headers = []ferry.Header{{Key: ferry.HeaderType, Value: []byte("test.event")}, {Key: "bin", Value: []byte{0, 1, '\n', 255}}}
		sent = append(sent, m)
	}
	tomb := &ferry.Message{Topic: "pf", Key: []byte("k0")}
	sent = append(sent, tomb)
	if err := b.Publish(ctx, sent[:30]...); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, sent[30:]...); err != nil {
		t.Fatal(err)
	}
	byID := map[ferry.ID]*ferry.Message{}
	for _, m := range sent {
		if m.ID.IsZero() {
			t.Fatal("Publish did not assign an ID")
		}
		byID[m.ID] = m
	}
	got := 0
	for p := range 3 {
		tp := backend.TopicPartition{Topic: "pf", Partition: int32(p)}
		start, end, err := b.Bounds(ctx, tp)
		if err != nil || start != 0 {
			t.Fatalf("Bounds: %d %d %v", start, end, err)
		}
		msgs := readAll(t, b, tp, 0)
		if uint64(len(msgs)) != end {
			t.Fatalf("partition %d: read %d messages, end is %d", p, len(msgs), end)
		}
		for i, m := range msgs {
			want := byID[m.ID]
			switch {
			case want == nil:
				t.Fatalf("read a message never published: %+v", m)
			case m.Offset != uint64(i) || want.Offset != m.Offset || want.Partition != m.Partition || m.Partition != int32(p):
				t.Fatalf("offsets: read %d/%d@%d at index %d; Publish reported %d@%d", m.Partition, p, m.Offset, i, want.Partition, want.Offset)
			case string(m.Key) != string(want.Key) || string(m.Payload) != string(want.Payload) || (m.Payload == nil) != (want.Payload == nil):
				t.Fatalf("message changed: got key %q payload %q, want %q %q", m.Key, m.Payload, want.Key, want.Payload)
			case len(m.Headers) != len(want.Headers):
				t.Fatalf("headers: got %v, want %v", m.Headers, want.Headers)
			case m.Time.IsZero():
				t.Fatal("message without time")
			}
			for j := range m.Headers {
				if m.Headers[j].Key != want.Headers[j].Key || string(m.Headers[j].Value) != string(want.Headers[j].Value) {
					t.Fatalf("header %d: got %v, want %v", j, m.Headers[j], want.Headers[j])
				}
			}
			got++
		}
	}
	if got != len(sent) {
		t.Fatalf("read %d messages, published %d", got, len(sent))
	}
}

func testKeyToPartition(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "kp", 5)
	for i := range 40 {
		m := msg("kp", fmt.Sprintf("customer-%d", i), i)
		if err := b.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		if want := ferry.PartitionForKey(m.Key, 5); m.Partition != want {
			t.Fatalf("key %s went to partition %d, want %d (ferry.PartitionForKey)", m.Key, m.Partition, want)
		}
	}
	pinned := &ferry.Message{Topic: "kp", Key: []byte("x"), Partition: 4, PinPartition: true, Payload: []byte("p")}
	if err := b.Publish(ctx, pinned); err != nil || pinned.Partition != 4 {
		t.Fatalf("pinned publish: partition %d, %v", pinned.Partition, err)
	}
	if n, err := b.Partitions(ctx, "kp"); err != nil || n != 5 {
		t.Fatalf("Partitions = %d, %v", n, err)
	}
	// EnsureTopic on an existing topic changes nothing.
	ensure(t, b, "kp", 2)
	if n, _ := b.Partitions(ctx, "kp"); n != 5 {
		t.Fatalf("EnsureTopic changed the partition count to %d", n)
	}
}

func testDedup(t *testing.T, h Harness) {
	if h.NoIDDedup != "" {
		t.Skip(h.NoIDDedup)
	}
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "dd", 2)
	first := msg("dd", "k", 1)
	if err := b.Publish(ctx, first, msg("dd", "k", 2)); err != nil {
		t.Fatal(err)
	}
	retry := &ferry.Message{ID: first.ID, Topic: "dd", Key: []byte("k"), Payload: first.Payload}
	if err := b.Publish(ctx, retry); err != nil {
		t.Fatal(err)
	}
	tp := backend.TopicPartition{Topic: "dd", Partition: first.Partition}
	msgs := readAll(t, b, tp, 0)
	if len(msgs) != 2 {
		t.Fatalf("a retried publish was stored again: %d messages", len(msgs))
	}
	if retry.Offset != first.Offset {
		t.Fatalf("retried publish acknowledged at %d, first at %d", retry.Offset, first.Offset)
	}

	// A backend that deduplicates says which messages were duplicates.
	if h.NoDedupReport != "" {
		t.Skip(h.NoDedupReport)
	}
	dp, ok := b.(backend.DedupPublisher)
	if !ok {
		t.Fatalf("%T deduplicates by ID but does not say which publishes were duplicates (backend.DedupPublisher)", b)
	}
	again := &ferry.Message{ID: first.ID, Topic: "dd", Key: []byte("k"), Payload: first.Payload}
	fresh := msg("dd", "k", 3)
	dup, err := dp.PublishDedup(ctx, again, fresh)
	if err != nil {
		t.Fatal(err)
	}
	if len(dup) != 2 || !dup[0] || dup[1] || again.Offset != first.Offset || again.Partition != first.Partition {
		t.Fatalf("PublishDedup of a duplicate and a new message: %v, the duplicate at %d/%d (the original at %d/%d)",
			dup, again.Partition, again.Offset, first.Partition, first.Offset)
	}
	if msgs := readAll(t, b, tp, 0); len(msgs) != 3 || msgs[2].ID != fresh.ID {
		t.Fatalf("after PublishDedup the partition holds %d messages, want 3 ending with the new one", len(msgs))
	}
	if dup, err := dp.PublishDedup(ctx, msg("dd", "k", 4)); err != nil || len(dup) != 1 || dup[0] {
		t.Fatalf("PublishDedup of a new message: %v, %v", dup, err)
	}

	// A topic created with its own window remembers IDs that long.
	if _, ok := b.(backend.Admin); !ok {
		return
	}
	if err := backend.EnsureTopicConfig(ctx, b, backend.TopicInfo{Name: "dd-own", Partitions: 1, DedupWindow: time.Hour}); err != nil {
		t.Fatal(err)
	}
	infos, err := b.(backend.Admin).Topics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range infos {
		if ti.Name == "dd-own" && ti.DedupWindow != time.Hour {
			t.Fatalf("topic created with a dedup window of 1h has %v", ti.DedupWindow)
		}
	}
	// An existing topic is left as it is.
	if err := backend.EnsureTopicConfig(ctx, b, backend.TopicInfo{Name: "dd-own", Partitions: 3}); err != nil {
		t.Fatalf("EnsureTopicConfig of an existing topic: %v", err)
	}
	if n, err := b.Partitions(ctx, "dd-own"); err != nil || n != 1 {
		t.Fatalf("EnsureTopicConfig changed an existing topic: %d partitions, %v", n, err)
	}
}

func testReplay(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "rp", 1)
	tp := backend.TopicPartition{Topic: "rp"}
	for i := range 10 {
		if err := b.Publish(ctx, msg("rp", "k", i)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	mark := time.Now()
	time.Sleep(50 * time.Millisecond)
	for i := 10; i < 20; i++ {
		if err := b.Publish(ctx, msg("rp", "k", i)); err != nil {
			t.Fatal(err)
		}
	}
	off, err := b.OffsetForTime(ctx, tp, mark)
	if err != nil || off != 10 {
		t.Fatalf("OffsetForTime = %d, %v; want 10", off, err)
	}
	if off, err := b.OffsetForTime(ctx, tp, time.Now().Add(time.Hour)); err != nil || off != 20 {
		t.Fatalf("OffsetForTime(future) = %d, %v; want the end, 20", off, err)
	}
	msgs := readAll(t, b, tp, 15)
	if len(msgs) != 5 || msgs[0].Offset != 15 {
		t.Fatalf("replay from 15: %d messages, first at %d", len(msgs), msgs[0].Offset)
	}
	if _, s := seqOf(msgs[0]); s != 15 {
		t.Fatalf("offset 15 holds sequence %d", s)
	}
	// A second read of the same range returns the same messages.
	again := readAll(t, b, tp, 3)
	if _, s := seqOf(again[0]); s != 3 || len(again) != 17 {
		t.Fatalf("replay from 3: first sequence %d, %d messages", s, len(again))
	}
}

// nextAssignment waits for the session's next assignment.
func nextAssignment(t *testing.T, s backend.Session) []backend.TopicPartition {
	t.Helper()
	select {
	case tps, ok := <-s.Assignments():
		if !ok {
			t.Fatal("session ended")
		}
		return tps
	case <-time.After(30 * time.Second):
		t.Fatal("no assignment in 30s")
		return nil
	}
}

// waitFor reads assignments until one has n partitions.
func waitFor(t *testing.T, s backend.Session, n int) []backend.TopicPartition {
	t.Helper()
	for {
		if tps := nextAssignment(t, s); len(tps) == n {
			return tps
		}
	}
}

func testGroup(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "gr", 4)
	a, err := b.Join(ctx, "billing", "a", []string{"gr"})
	if err != nil {
		t.Fatal(err)
	}
	all := waitFor(t, a, 4)
	for i, tp := range all {
		if err := b.Commit(ctx, a, backend.Offset{TopicPartition: tp, Offset: uint64(10 + i)}); err != nil {
			t.Fatalf("commit by owner: %v", err)
		}
	}
	bm, err := b.Join(ctx, "billing", "b", []string{"gr"})
	if err != nil {
		t.Fatal(err)
	}
	kept := waitFor(t, a, 2) // a is told to let two go
	keptSet := map[backend.TopicPartition]bool{}
	for _, tp := range kept {
		keptSet[tp] = true
	}
	var moved []backend.TopicPartition
	for _, tp := range all {
		if !keptSet[tp] {
			moved = append(moved, tp)
		}
	}
	// b gets nothing of a's until a releases.
	select {
	case tps := <-bm.Assignments():
		for _, tp := range tps {
			if !keptSet[tp] {
				for _, m := range moved {
					if m == tp {
						t.Fatalf("b got %v before a released it", tp)
					}
				}
			}
		}
	case <-time.After(300 * time.Millisecond):
	}
	for _, tp := range moved {
		a.Release(tp)
	}
	got := waitFor(t, bm, 2)
	for i, tp := range got {
		if tp != moved[i] {
			t.Fatalf("b got %v, want %v", got, moved)
		}
		off, ok, err := b.Committed(ctx, "billing", tp)
		if err != nil || !ok || off < 10 {
			t.Fatalf("committed offset of %v after the move: %d %v %v", tp, off, ok, err)
		}
	}
	// a no longer owns the moved partitions: its commit is fenced.
	if err := b.Commit(ctx, a, backend.Offset{TopicPartition: moved[0], Offset: 99}); !errors.Is(err, backend.ErrFenced) {
		t.Fatalf("commit by the former owner: %v, want ErrFenced", err)
	}
	a.Leave()
	waitFor(t, bm, 4)
	if err := b.Commit(ctx, bm, backend.Offset{TopicPartition: kept[0], Offset: 50}); err != nil {
		t.Fatal(err)
	}
	if off, ok, _ := b.Committed(ctx, "billing", kept[0]); !ok || off != 50 {
		t.Fatalf("committed %d %v, want 50", off, ok)
	}
	if _, ok, _ := b.Committed(ctx, "other-group", kept[0]); ok {
		t.Fatal("another group has a committed offset")
	}
	bm.Leave()
}

// testLease: a session that heartbeats as the runtime does holds a lease
// that covers the present and moves on with time, and it has none once it
// left (the runtime starts no handler past it: issue 16, defect 17).
func testLease(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "lease", 1)
	s, err := b.Join(ctx, "leases", "a", []string{"lease"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, 1)
	beat := func() {
		if err := s.Heartbeat(); err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for beat(); !time.Now().Before(s.Lease()); beat() {
		if time.Now().After(deadline) {
			t.Fatalf("no lease 10s after the member got its partition (lease %v)", s.Lease())
		}
		time.Sleep(10 * time.Millisecond)
	}
	first := s.Lease()
	if limit := time.Now().Add(10 * time.Minute); first.After(limit) {
		t.Fatalf("lease %v runs past any session timeout", first)
	}
	// Past the first lease, with heartbeats as the runtime sends them: the
	// lease is renewed, never lapsing for more than a moment.
	lapsed := time.Duration(0)
	for last := time.Now(); time.Now().Before(first.Add(500 * time.Millisecond)); last = time.Now() {
		beat()
		if !time.Now().Before(s.Lease()) {
			lapsed += time.Since(last)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lapsed > time.Second {
		t.Fatalf("the lease lapsed for %v although the member heartbeat throughout", lapsed)
	}
	if !s.Lease().After(first) {
		t.Fatalf("lease %v not renewed past %v", s.Lease(), first)
	}
	s.Leave()
	if l := s.Lease(); !l.IsZero() {
		t.Fatalf("lease after Leave: %v, want none", l)
	}
}

func testBadInput(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	if err := b.EnsureTopic(ctx, "bad", 0); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("0 partitions: %v, want ErrInvalidArgument", err)
	}
	if _, err := b.Partitions(ctx, "missing"); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("Partitions of a missing topic: %v, want ErrTopicNotFound", err)
	}
	if err := b.Publish(ctx, msg("missing", "k", 0)); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("publish to a missing topic: %v, want ErrTopicNotFound", err)
	}
	ensure(t, b, "bad", 2)
	pinned := &ferry.Message{Topic: "bad", Partition: 7, PinPartition: true, Payload: []byte("x")}
	if err := b.Publish(ctx, pinned); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("pinned to a partition that does not exist: %v, want ErrInvalidArgument", err)
	}
	if _, err := b.Join(ctx, "", "m", []string{"bad"}); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("join without a group: %v", err)
	}
}

// recorder counts handled messages and checks per-key order of first
// handling.
type recorder struct {
	mu       sync.Mutex
	next     map[string]int
	handled  map[ferry.ID]bool
	failures []string
}

func newRecorder() *recorder { return &recorder{next: map[string]int{}, handled: map[ferry.ID]bool{}} }

func (r *recorder) record(m *ferry.Message, id ferry.ID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.handled[id] {
		return // a redelivery after a rebalance: allowed, already counted
	}
	r.handled[id] = true
	k, s := seqOf(m)
	if s < r.next[k] {
		r.failures = append(r.failures, fmt.Sprintf("key %s: sequence %d handled after %d", k, s, r.next[k]-1))
	}
	r.next[k] = s + 1
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.handled)
}

func (r *recorder) check(t *testing.T, want int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.failures) > 0 {
		t.Fatalf("per-key order broken: %v", r.failures[:min(5, len(r.failures))])
	}
	if len(r.handled) != want {
		t.Fatalf("%d messages handled, want %d", len(r.handled), want)
	}
}

// runConsumer runs a consumer until stop is called.
func runConsumer(t *testing.T, b backend.Backend, group, topic string, h consumer.Handler, opts ...consumer.Opt) (stop func()) {
	t.Helper()
	opts = append([]consumer.Opt{consumer.WithLogger(quiet), consumer.WithCommitInterval(20 * time.Millisecond),
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxAttempts: 3})}, opts...)
	c, err := consumer.New(b, group, []string{topic}, h, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("consumer: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publishKeys publishes sequences from..to-1 of each key.
func publishKeys(t *testing.T, b backend.Backend, topic string, keys, from, to int) {
	t.Helper()
	ctx := ctxFor(t)
	for i := from; i < to; i++ {
		var batch []*ferry.Message
		for k := range keys {
			batch = append(batch, msg(topic, fmt.Sprintf("k%02d", k), i))
		}
		if err := b.Publish(ctx, batch...); err != nil {
			t.Fatal(err)
		}
	}
}

func testRuntimeOrder(t *testing.T, h Harness) {
	b := h.New(t)
	ensure(t, b, "ro", 4)
	const keys, perKey = 20, 30
	rec := newRecorder()
	handler := func(ctx context.Context, m *ferry.Message) error {
		if consumer.Attempt(ctx) == 1 && m.ID[15]%7 == 0 {
			return errors.New("transient failure")
		}
		rec.record(m, m.ID)
		return nil
	}
	publishKeys(t, b, "ro", keys, 0, 10)
	stopA := runConsumer(t, b, "ro-group", "ro", handler, consumer.WithMember("a"))
	waitUntil(t, "a to start handling", func() bool { return rec.count() > 0 })
	runConsumer(t, b, "ro-group", "ro", handler, consumer.WithMember("b"))
	publishKeys(t, b, "ro", keys, 10, 20)
	waitUntil(t, "two thirds of the messages", func() bool { return rec.count() >= keys*20 })
	stopA() // b takes a's partitions over and resumes from a's commits
	publishKeys(t, b, "ro", keys, 20, perKey)
	waitUntil(t, "every message", func() bool { return rec.count() >= keys*perKey })
	rec.check(t, keys*perKey)
}

func testDLQRoundTrip(t *testing.T, h Harness) {
	b := h.New(t)
	ctx := ctxFor(t)
	ensure(t, b, "dl", 2)
	var mu sync.Mutex
	fixed := false
	rec := newRecorder()
	var poison ferry.ID
	handler := func(ctx context.Context, m *ferry.Message) error {
		id := m.ID
		if of, ok := m.Header(dlq.HeaderRedriveOf); ok {
			id, _ = ferry.ParseID(string(of))
		}
		mu.Lock()
		bad := id == poison && !fixed
		mu.Unlock()
		if bad {
			return ferry.Permanent(errors.New("cannot be processed yet"))
		}
		rec.record(m, id)
		return nil
	}
	var msgs []*ferry.Message
	for i := range 10 {
		msgs = append(msgs, msg("dl", "stuck", i), msg("dl", "free", i))
	}
	poison = msgs[6].ID // stuck:3
	stop := runConsumer(t, b, "dl-group", "dl", handler)
	if err := b.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// free:0-9 and stuck:0-2 are handled; stuck:3 is dead, 4-9 parked.
	waitUntil(t, "the free key and the stuck key's head", func() bool { return rec.count() == 13 })
	q := dlq.Open(b, "dl-group.dlq")
	var entries []dlq.Entry
	waitUntil(t, "the DLQ to hold the poison message and the parked ones", func() bool {
		entries, _ = q.List(ctx, dlq.Filter{})
		return len(entries) == 7
	})
	if entries[0].Original.ID != poison || entries[0].Class != "permanent" || entries[1].Class != dlq.ClassParked {
		t.Fatalf("DLQ entries: first %s class %s, second class %s", entries[0].Original.ID, entries[0].Class, entries[1].Class)
	}
	mu.Lock()
	fixed = true
	mu.Unlock()
	n, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: dlq.Filter{Key: []byte("stuck")}})
	if err != nil || n != 7 {
		t.Fatalf("redrive: %d, %v", n, err)
	}
	waitUntil(t, "the redriven key", func() bool { return rec.count() == 20 })
	stop()
	rec.check(t, 20)
	// Redrive is idempotent.
	if n, err := q.Redrive(ctx, dlq.RedriveOpts{}); err != nil || n != 0 {
		t.Fatalf("second redrive: %d, %v", n, err)
	}
}

// testDurableRetry has a handler ask for a retry longer than the
// consumer's durable threshold: it is scheduled through the DLQ, other keys
// flow, the consumer restarts, and the retry runs when due with the key's
// later messages behind it in order.
func testDurableRetry(t *testing.T, h Harness) {
	b := h.New(t)
	ensure(t, b, "dr", 2)
	rec := newRecorder()
	var mu sync.Mutex
	var attempts []int
	handler := func(ctx context.Context, m *ferry.Message) error {
		if k, s := seqOf(m); k == "later" && s == 0 {
			mu.Lock()
			attempts = append(attempts, consumer.Attempt(ctx))
			mu.Unlock()
			if consumer.Attempt(ctx) == 1 {
				return ferry.RetryAfter(errors.New("come back in three seconds"), 3*time.Second)
			}
		}
		rec.record(m, m.ID)
		return nil
	}
	opts := []consumer.Opt{consumer.WithDurableRetry(200 * time.Millisecond)}
	stop := runConsumer(t, b, "dr-group", "dr", handler, opts...)
	var msgs []*ferry.Message
	for i := range 5 {
		msgs = append(msgs, msg("dr", "later", i), msg("dr", "now", i))
	}
	if err := b.Publish(ctxFor(t), msgs...); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the other key", func() bool { return rec.count() >= 5 })
	q := dlq.Open(b, "dr-group.dlq")
	waitUntil(t, "the scheduled retry and the key's parked messages", func() bool {
		entries, _ := q.List(ctxFor(t), dlq.Filter{})
		return len(entries) == 5 && entries[0].Class == dlq.ClassScheduled
	})
	stop()
	runConsumer(t, b, "dr-group", "dr", handler, opts...)
	waitUntil(t, "the retried key", func() bool { return rec.count() == 10 })
	rec.check(t, 10)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2]" {
		t.Fatalf("attempts of the retried message: %v, want [1 2]", attempts)
	}
}

func testAtomic(t *testing.T, h Harness) {
	b := h.New(t)
	tx, ok := b.(backend.Transactional)
	if !ok {
		t.Skip("the backend has no atomic publish-and-commit")
	}
	ctx := ctxFor(t)
	ensure(t, b, "in", 1)
	ensure(t, b, "out", 1)
	s, err := b.Join(ctx, "eo", "m", []string{"in"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Leave()
	tp := waitFor(t, s, 1)[0]
	if err := tx.PublishAndCommit(ctx, s, []*ferry.Message{msg("out", "k", 0)}, backend.Offset{TopicPartition: tp, Offset: 7}); err != nil {
		t.Fatal(err)
	}
	if off, ok, _ := b.Committed(ctx, "eo", tp); !ok || off != 7 {
		t.Fatalf("offset after PublishAndCommit: %d %v", off, ok)
	}
	if got := readAll(t, b, backend.TopicPartition{Topic: "out"}, 0); len(got) != 1 {
		t.Fatalf("%d outputs", len(got))
	}

	// The runtime's exactly-once batch carries the partition's watermark
	// as it was when the batch was made; a plain commit of a newer one
	// can land first (issue 16's suspicion, confirmed). The member's
	// committed offset must not go back.
	if err := b.Commit(ctx, s, backend.Offset{TopicPartition: tp, Offset: 12}); err != nil {
		t.Fatal(err)
	}
	if err := tx.PublishAndCommit(ctx, s, []*ferry.Message{msg("out", "k", 1)}, backend.Offset{TopicPartition: tp, Offset: 9}); err != nil {
		t.Fatal(err)
	}
	if off, ok, _ := b.Committed(ctx, "eo", tp); !ok || off != 12 {
		t.Fatalf("a transaction carrying offset 9 after a commit of 12 left the group at %d (found %v): the committed offset went back", off, ok)
	}
	if got := readAll(t, b, backend.TopicPartition{Topic: "out"}, 0); len(got) != 2 {
		t.Fatalf("%d outputs, want 2", len(got))
	}
}

// testExactlyOnce runs consume-transform-produce with the exactly-once
// path while members join and leave (each with a store of its own, as on
// separate machines) and handlers fail at random after emitting: every
// input must have exactly one output in the log, whatever the backend's
// dedup.
func testExactlyOnce(t *testing.T, h Harness) {
	b := h.New(t)
	if _, ok := b.(backend.Transactional); !ok {
		t.Skip("the backend has no atomic publish-and-commit")
	}
	ctx := ctxFor(t)
	ensure(t, b, "eo-in", 3)
	ensure(t, b, "eo-out", 2)
	rec := newRecorder()
	handler := func(ctx context.Context, m *ferry.Message) error {
		// Outputs carry no ID: the runtime derives one from the input,
		// which is what a backend with ID dedup would drop; without it,
		// only the transaction keeps a retried input from writing twice.
		if err := consumer.Emit(ctx, &ferry.Message{Topic: "eo-out", Key: m.Key, Payload: []byte(m.ID.String())}); err != nil {
			return err
		}
		if consumer.Attempt(ctx) == 1 && m.ID[15]%5 == 0 {
			return errors.New("fails after emitting: the output must be dropped")
		}
		rec.record(m, m.ID)
		return nil
	}
	member := func(name string) func() {
		store, err := idempotency.OpenLog(ctx, b, "eo-group.processed", time.Hour, 100000)
		if err != nil {
			t.Fatal(err)
		}
		return runConsumer(t, b, "eo-group", "eo-in", handler, consumer.WithMember(name), consumer.WithExactlyOnce(store))
	}
	const keys, perKey = 10, 30
	publishKeys(t, b, "eo-in", keys, 0, 10)
	stopA := member("a")
	waitUntil(t, "a to start handling", func() bool { return rec.count() > 0 })
	member("b")
	publishKeys(t, b, "eo-in", keys, 10, 20)
	waitUntil(t, "two thirds of the inputs", func() bool { return rec.count() >= keys*20 })
	stopA()
	publishKeys(t, b, "eo-in", keys, 20, perKey)
	waitUntil(t, "every input", func() bool { return rec.count() >= keys*perKey })
	rec.check(t, keys*perKey)
	// A handler's success is recorded before its outputs commit: wait for
	// the outputs, then check there is no extra one.
	var outputs map[string]int
	total := 0
	waitUntil(t, "every output", func() bool {
		outputs, total = map[string]int{}, 0
		for p := range 2 {
			for _, m := range readAll(t, b, backend.TopicPartition{Topic: "eo-out", Partition: int32(p)}, 0) {
				outputs[string(m.Payload)]++
				total++
			}
		}
		return len(outputs) >= keys*perKey
	})
	for in, n := range outputs {
		if n != 1 {
			t.Errorf("input %s has %d outputs", in, n)
		}
	}
	if len(outputs) != keys*perKey || total != keys*perKey {
		t.Fatalf("%d outputs for %d distinct inputs, want %d of each", total, len(outputs), keys*perKey)
	}
}

// testOutage publishes while consuming, takes the server away, brings it
// back, and checks that every acknowledged message was handled in per-key
// order and that nothing was dead-lettered.
func testOutage(t *testing.T, h Harness) {
	if h.Outage == nil {
		t.Skip("the harness cannot take the server away")
	}
	b := h.New(t)
	ensure(t, b, "ou", 3)
	rec := newRecorder()
	stop := runConsumer(t, b, "ou-group", "ou", func(ctx context.Context, m *ferry.Message) error {
		rec.record(m, m.ID)
		return nil
	})
	const keys = 10
	acked := 0
	// A producer retries a failed publish with the same message (same
	// ID): a publish that failed may still have been stored, and the
	// backend's dedup keeps it once.
	var pending *ferry.Message
	publish := func(n int) (failed int) {
		for range n {
			if pending == nil {
				pending = msg("ou", fmt.Sprintf("k%02d", acked%keys), acked/keys)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := b.Publish(ctx, pending)
			cancel()
			if err != nil {
				failed++
				continue
			}
			pending = nil
			acked++
		}
		return failed
	}
	publish(100)
	waitUntil(t, "the first messages", func() bool { return rec.count() >= 50 })
	restore := h.Outage(t)
	if failed := publish(3); failed != 3 {
		t.Fatalf("%d of 3 publishes succeeded with the server away", 3-failed)
	}
	time.Sleep(200 * time.Millisecond)
	restore()
	deadline := time.Now().Add(60 * time.Second)
	for acked < 200 && time.Now().Before(deadline) {
		publish(200 - acked)
	}
	waitUntil(t, "every acknowledged message", func() bool { return rec.count() >= acked })
	stop()
	rec.check(t, acked)
	ctx := ctxFor(t)
	if _, end, err := b.Bounds(ctx, backend.TopicPartition{Topic: "ou-group.dlq"}); err != nil || end != 0 {
		t.Fatalf("dead letters during the outage: %d (%v)", end, err)
	}
}
