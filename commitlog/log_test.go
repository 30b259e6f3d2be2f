package commitlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

const testDir = "/data"

func openTest(t testing.TB, fs vfs.FS, opts ...Opt) *Log {
	t.Helper()
	l, err := Open(context.Background(), testDir, append([]Opt{WithFS(fs)}, opts...)...)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return l
}

func mustCreate(t testing.TB, l *Log, name string, c TopicConfig) {
	t.Helper()
	if err := l.CreateTopic(context.Background(), name, c); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
}

func msg(topic, key, payload string) *ferry.Message {
	m := &ferry.Message{Topic: topic, Payload: []byte(payload)}
	if key != "" {
		m.Key = []byte(key)
	}
	return m
}

// readAll reads a whole partition.
func readAll(t testing.TB, l *Log, topic string, part int32) []*ferry.Message {
	t.Helper()
	start, _, err := l.Bounds(topic, part)
	if err != nil {
		t.Fatal(err)
	}
	var out []*ferry.Message
	for off := start; ; {
		res, err := l.Read(topic, part, off, ReadOpts{})
		if err != nil {
			t.Fatalf("read %s/%d@%d: %v", topic, part, off, err)
		}
		out = append(out, res.Messages...)
		if len(res.Messages) == 0 || res.Next >= res.HighWatermark {
			return out
		}
		off = res.Next
	}
}

func TestAppendReadReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	l := openTest(t, fs)
	mustCreate(t, l, "orders", TopicConfig{Partitions: 4})
	var sent []*ferry.Message
	for i := 0; i < 100; i++ {
		m := msg("orders", fmt.Sprintf("k%d", i%7), fmt.Sprintf("v%d", i))
		m.Headers = []ferry.Header{{Key: ferry.HeaderType, Value: []byte("order.placed")}}
		if err := l.Append(ctx, m); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, m)
	}
	check := func(l *Log) {
		t.Helper()
		got := map[ferry.ID]*ferry.Message{}
		for p := int32(0); p < 4; p++ {
			prev := int64(-1)
			for _, m := range readAll(t, l, "orders", p) {
				if int64(m.Offset) != prev+1 {
					t.Fatalf("partition %d: offset %d after %d", p, m.Offset, prev)
				}
				prev = int64(m.Offset)
				got[m.ID] = m
			}
		}
		if len(got) != len(sent) {
			t.Fatalf("read %d messages, sent %d", len(got), len(sent))
		}
		for _, s := range sent {
			g := got[s.ID]
			if g == nil || g.Partition != s.Partition || g.Offset != s.Offset || !bytes.Equal(g.Payload, s.Payload) || !bytes.Equal(g.Key, s.Key) || !g.Time.Equal(s.Time) {
				t.Fatalf("message %s: got %+v, sent %+v", s.ID, g, s)
			}
			if v, _ := g.Header(ferry.HeaderType); string(v) != "order.placed" {
				t.Fatalf("header lost: %+v", g.Headers)
			}
			if g.Partition != ferry.PartitionForKey(s.Key, 4) {
				t.Fatalf("key %s in partition %d, want %d", s.Key, g.Partition, ferry.PartitionForKey(s.Key, 4))
			}
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTest(t, fs)
	defer l.Close()
	if l.Recovery().Checkpoint == "" {
		t.Errorf("clean reopen did not use the checkpoint written on close")
	}
	check(l)
	// Appends continue after the recovered offsets.
	m := msg("orders", "k0", "after")
	if err := l.Append(ctx, m); err != nil {
		t.Fatal(err)
	}
	_, end, _ := l.Bounds("orders", m.Partition)
	if m.Offset != end-1 {
		t.Fatalf("offset %d, end %d", m.Offset, end)
	}
}

func TestReopenWithoutCheckpointReplaysWholeLog(t *testing.T) {
	fs := vfs.NewMemFS()
	l := openTest(t, fs, WithSegmentBytes(64<<10), WithMaxBatchBytes(16<<10), WithMaxGroupBytes(16<<10), WithMaxMessageBytes(8<<10))
	mustCreate(t, l, "t", TopicConfig{Partitions: 2})
	for i := 0; i < 2000; i++ {
		if err := l.Append(context.Background(), msg("t", fmt.Sprint(i), strings.Repeat("x", 100))); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	removeCheckpoints(t, fs)
	segs, _ := fs.List(testDir + "/wal")
	if len(segs) < 3 {
		t.Fatalf("expected several segments, got %v", segs)
	}
	l = openTest(t, fs, WithSegmentBytes(64<<10), WithMaxBatchBytes(16<<10), WithMaxGroupBytes(16<<10), WithMaxMessageBytes(8<<10))
	defer l.Close()
	if l.Recovery().SegmentsScanned != len(segs) {
		t.Fatalf("scanned %d segments, have %d", l.Recovery().SegmentsScanned, len(segs))
	}
	n := len(readAll(t, l, "t", 0)) + len(readAll(t, l, "t", 1))
	if n != 2000 {
		t.Fatalf("read %d, want 2000", n)
	}
}

func TestDedupAcrossReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	l := openTest(t, fs, WithClock(clock))
	mustCreate(t, l, "t", TopicConfig{Partitions: 3, DedupWindow: time.Minute})
	orig := msg("t", "a", "one")
	if err := l.Append(ctx, orig); err != nil {
		t.Fatal(err)
	}
	again := msg("t", "a", "one")
	again.ID = orig.ID
	b := &Batch{Messages: []*ferry.Message{again}}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 1 || again.Offset != orig.Offset || again.Partition != orig.Partition {
		t.Fatalf("duplicate not suppressed: err=%v dups=%d offset=%d/%d", err, b.Duplicates, again.Offset, orig.Offset)
	}
	l.Close()
	l = openTest(t, fs, WithClock(clock))
	third := msg("t", "a", "one")
	third.ID = orig.ID
	b = &Batch{Messages: []*ferry.Message{third}}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 1 || third.Offset != orig.Offset {
		t.Fatalf("duplicate after reopen not suppressed: err=%v dups=%d", err, b.Duplicates)
	}
	// Past the window the ID is forgotten (by the injected clock, not by sleeping).
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	fourth := msg("t", "a", "one")
	fourth.ID = orig.ID
	b = &Batch{Messages: []*ferry.Message{fourth}}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 0 {
		t.Fatalf("after the window: err=%v dups=%d", err, b.Duplicates)
	}
	// That new write starts a new window: a retry of it is a duplicate of
	// it, not of the forgotten first write.
	mu.Lock()
	now = now.Add(10 * time.Second)
	mu.Unlock()
	fifth := msg("t", "a", "one")
	fifth.ID = orig.ID
	b = &Batch{Messages: []*ferry.Message{fifth}}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 1 || fifth.Offset != fourth.Offset {
		t.Fatalf("retry of a write made after the window: err=%v dups=%d offset=%d, want a duplicate of %d", err, b.Duplicates, fifth.Offset, fourth.Offset)
	}
	l.Close()
}

func TestAtomicBatchWithOffsets(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	l := openTest(t, fs)
	mustCreate(t, l, "in", TopicConfig{})
	mustCreate(t, l, "out", TopicConfig{Partitions: 2})
	b := &Batch{
		Messages: []*ferry.Message{msg("out", "x", "1"), msg("out", "y", "2"), msg("in", "", "3")},
		Group:    "g",
		Offsets:  []Offset{{Topic: "in", Partition: 0, Offset: 42}},
	}
	if err := l.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if off, ok := l.CommittedOffset("g", "in", 0); !ok || off != 42 {
		t.Fatalf("committed offset %d %v", off, ok)
	}
	// A batch naming a missing topic is rejected whole.
	bad := &Batch{Messages: []*ferry.Message{msg("out", "x", "ok"), msg("nope", "x", "bad")}}
	if err := l.Commit(ctx, bad); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("want ErrTopicNotFound, got %v", err)
	}
	l.Close()
	l = openTest(t, fs)
	defer l.Close()
	if off, ok := l.CommittedOffset("g", "in", 0); !ok || off != 42 {
		t.Fatalf("after reopen committed offset %d %v", off, ok)
	}
	n := len(readAll(t, l, "out", 0)) + len(readAll(t, l, "out", 1))
	if n != 2 {
		t.Fatalf("out has %d messages, want 2 (the rejected batch must add none)", n)
	}
}

func TestDelayedDelivery(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	l := openTest(t, vfs.NewMemFS(), WithClock(clock))
	defer l.Close()
	mustCreate(t, l, "d", TopicConfig{})
	m1 := msg("d", "", "now")
	m2 := msg("d", "", "later")
	m2.NotBefore = now.Add(time.Hour)
	if err := l.Append(ctx, m1, m2); err != nil {
		t.Fatal(err)
	}
	res, err := l.Read("d", 0, 0, ReadOpts{})
	if err != nil || len(res.Messages) != 1 || !res.WaitUntil.Equal(m2.NotBefore) || res.Next != 1 {
		t.Fatalf("before due: %d messages, wait %v, next %d, err %v", len(res.Messages), res.WaitUntil, res.Next, err)
	}
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	res, err = l.Read("d", 0, 1, ReadOpts{})
	if err != nil || len(res.Messages) != 1 || string(res.Messages[0].Payload) != "later" {
		t.Fatalf("after due: %+v %v", res, err)
	}
}

func TestFetchWaitsForData(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, vfs.NewMemFS())
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	got := make(chan ReadResult, 1)
	go func() {
		res, err := l.Fetch(ctx, "t", 0, 0, ReadOpts{})
		if err != nil {
			t.Error(err)
		}
		got <- res
	}()
	if err := l.Append(ctx, msg("t", "", "hello")); err != nil {
		t.Fatal(err)
	}
	res := <-got
	if len(res.Messages) != 1 || string(res.Messages[0].Payload) != "hello" {
		t.Fatalf("fetch got %+v", res)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Fetch(cctx, "t", 0, 1, ReadOpts{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled fetch: %v", err)
	}
}

func TestCloseWakesFetch(t *testing.T) {
	l := openTest(t, vfs.NewMemFS())
	mustCreate(t, l, "t", TopicConfig{})
	errc := make(chan error, 1)
	go func() {
		_, err := l.Fetch(context.Background(), "t", 0, 0, ReadOpts{})
		errc <- err
	}()
	// Whether Fetch is already waiting or not, it must end with ErrClosed.
	l.Close()
	if err := <-errc; !errors.Is(err, ferry.ErrClosed) {
		t.Fatalf("fetch across close: %v", err)
	}
	if _, err := l.Read("t", 0, 0, ReadOpts{}); !errors.Is(err, ferry.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

func TestOffsetForTime(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, vfs.NewMemFS())
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	base := time.Unix(1_700_000_000, 0)
	for i := 0; i < 50; i++ {
		m := msg("t", "", fmt.Sprint(i))
		m.Time = base.Add(time.Duration(i) * time.Second)
		if err := l.Append(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		at   time.Time
		want uint64
	}{{base.Add(-time.Hour), 0}, {base, 0}, {base.Add(10 * time.Second), 10}, {base.Add(10500 * time.Millisecond), 11}, {base.Add(time.Hour), 50}} {
		got, err := l.OffsetForTime("t", 0, c.at)
		if err != nil || got != c.want {
			t.Errorf("OffsetForTime(%v) = %d, %v; want %d", c.at.Sub(base), got, err, c.want)
		}
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, vfs.NewMemFS(), WithMaxMessageBytes(1024))
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{Partitions: 2})
	cases := []struct {
		name string
		do   func() error
		want error
		text string
	}{
		{"oversize", func() error { return l.Append(ctx, msg("t", "", strings.Repeat("x", 2000))) }, ferry.ErrInvalidArgument, "limit is 1024"},
		{"bad topic name", func() error { return l.Append(ctx, msg("bad topic", "", "x")) }, ferry.ErrInvalidArgument, "allowed are ASCII letters"},
		{"reserved name", func() error { return l.CreateTopic(ctx, "__x", TopicConfig{}) }, ferry.ErrInvalidArgument, "reserved"},
		{"empty name", func() error { return l.CreateTopic(ctx, "", TopicConfig{}) }, ferry.ErrInvalidArgument, "empty topic name"},
		{"too many partitions", func() error { return l.CreateTopic(ctx, "big", TopicConfig{Partitions: 5000}) }, ferry.ErrInvalidArgument, "5000 partitions"},
		{"exists", func() error { return l.CreateTopic(ctx, "t", TopicConfig{}) }, ferry.ErrTopicExists, `"t"`},
		{"unknown topic", func() error { return l.Append(ctx, msg("nope", "", "x")) }, ferry.ErrTopicNotFound, `"nope"`},
		{"pinned partition out of range", func() error {
			m := msg("t", "", "x")
			m.Partition, m.PinPartition = 7, true
			return l.Append(ctx, m)
		}, ferry.ErrInvalidArgument, "partitions 0 to 1"},
		{"offsets without group", func() error {
			return l.Commit(ctx, &Batch{Offsets: []Offset{{Topic: "t"}}})
		}, ferry.ErrInvalidArgument, "group name"},
		{"empty batch", func() error { return l.Append(ctx) }, ferry.ErrInvalidArgument, "empty batch"},
		{"read bad partition", func() error { _, err := l.Read("t", 9, 0, ReadOpts{}); return err }, ferry.ErrInvalidArgument, "partition 9"},
		{"read past end", func() error { _, err := l.Read("t", 0, 5, ReadOpts{}); return err }, ferry.ErrOffsetOutOfRange, "past the end"},
	}
	for _, c := range cases {
		err := c.do()
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.text) {
			t.Errorf("%s: got %v, want %v containing %q", c.name, err, c.want, c.text)
		}
	}
	for p := int32(0); p < 2; p++ {
		if _, end, _ := l.Bounds("t", p); end != 0 {
			t.Errorf("partition %d has %d messages after only bad input", p, end)
		}
	}
	if len(l.Topics()) != 1 {
		t.Errorf("topics: %+v", l.Topics())
	}
}

func TestDirectoryLockAndMarker(t *testing.T) {
	fs := vfs.NewMemFS()
	l := openTest(t, fs)
	_, err := Open(context.Background(), testDir, WithFS(fs))
	if !errors.Is(err, ferry.ErrLocked) || !strings.Contains(err.Error(), "in use by process") {
		t.Fatalf("second open: %v", err)
	}
	// Read-only opens work while the owner runs.
	ro, err := Open(context.Background(), testDir, WithFS(fs), WithReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	if err := ro.Append(context.Background(), msg("t", "", "x")); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("append to read-only log: %v", err)
	}
	ro.Close()
	l.Close()
	fs.MkdirAll("/other")
	f, _ := fs.Create("/other/notes.txt")
	f.Close()
	if _, err := Open(context.Background(), "/other", WithFS(fs)); err == nil || !strings.Contains(err.Error(), "not a ferry data directory") {
		t.Fatalf("foreign directory: %v", err)
	}
}

func TestDeleteTopic(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	l := openTest(t, fs)
	mustCreate(t, l, "a", TopicConfig{})
	if err := l.Append(ctx, msg("a", "", "x")); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteTopic(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.Bounds("a", 0); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("bounds of deleted topic: %v", err)
	}
	mustCreate(t, l, "a", TopicConfig{})
	l.Close()
	l = openTest(t, fs)
	defer l.Close()
	if _, end, err := l.Bounds("a", 0); err != nil || end != 0 {
		t.Fatalf("recreated topic: end %d err %v", end, err)
	}
}

func TestAppendAsyncPromisesInOrder(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, vfs.NewMemFS())
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	var mu sync.Mutex
	var offsets []uint64
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		l.AppendAsync(ctx, func(b *Batch, err error) {
			defer wg.Done()
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			offsets = append(offsets, b.Messages[0].Offset)
			mu.Unlock()
		}, msg("t", "", fmt.Sprint(i)))
	}
	wg.Wait()
	for i, o := range offsets {
		if o != uint64(i) {
			t.Fatalf("promise %d reported offset %d: promises must come in append order", i, o)
		}
	}
	// Bad input is reported through the promise, and writes nothing.
	var bad error
	l.AppendAsync(ctx, func(_ *Batch, err error) { bad = err }, msg("t", "", strings.Repeat("x", 2<<20)))
	if !errors.Is(bad, ferry.ErrInvalidArgument) {
		t.Fatalf("oversize async append: %v", bad)
	}
	if _, end, _ := l.Bounds("t", 0); end != 200 {
		t.Fatalf("end %d", end)
	}
}

// TestFailedLogRefusesWrites: after an fsync failure nothing more is
// acknowledged, even when the disk recovers, until the log is reopened.
func TestFailedLogRefusesWrites(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewMemFS()
	ffs := vfs.NewFaultFS(mem)
	l := openTest(t, ffs)
	mustCreate(t, l, "t", TopicConfig{})
	ffs.SetInjector(func(op vfs.Op, _ string, _ int64) error {
		if op == vfs.OpSync {
			return vfs.EIO
		}
		return nil
	})
	if err := l.Append(ctx, msg("t", "", "a")); !errors.Is(err, ferry.ErrLogFailed) || !errors.Is(err, vfs.EIO) {
		t.Fatalf("append with failing fsync: %v", err)
	}
	ffs.SetInjector(nil) // the disk "recovers"; the log must not trust it
	if err := l.Append(ctx, msg("t", "", "b")); !errors.Is(err, ferry.ErrLogFailed) {
		t.Fatalf("append after a failed fsync: %v", err)
	}
	l.Close()
	l = openTest(t, mem)
	defer l.Close()
	if err := l.Append(ctx, msg("t", "", "c")); err != nil {
		t.Fatalf("append after reopen: %v", err)
	}
}

// TestBackpressureBoundsQueuedBytes floods a log whose disk is slow: the
// bytes waiting for the writer never exceed the budget, TryCommit answers
// ErrBackpressure instead of queueing more, and every accepted append is
// written.
func TestBackpressureBoundsQueuedBytes(t *testing.T) {
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	const budget = 64 << 10
	l := openTest(t, ffs, WithMaxQueueBytes(budget), WithMaxBatchBytes(16<<10), WithMaxMessageBytes(8<<10))
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	ffs.SetSyncDelay(5 * time.Millisecond)
	var accepted, refused atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				err := l.TryCommit(&Batch{Messages: []*ferry.Message{msg("t", "", strings.Repeat("x", 8<<10))}})
				switch {
				case err == nil:
					accepted.Add(1)
				case errors.Is(err, ferry.ErrBackpressure):
					refused.Add(1)
				default:
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if refused.Load() == 0 {
		t.Fatalf("320 appends of 8 KiB against a 64 KiB budget on a slow disk: none refused")
	}
	if _, end, _ := l.Bounds("t", 0); end != uint64(accepted.Load()) {
		t.Fatalf("%d accepted, %d in the log", accepted.Load(), end)
	}
	// The budget is whole again once everything is written.
	if !l.queueBytes.TryAcquire(budget) {
		t.Fatalf("queue budget not released")
	}
	l.queueBytes.Release(budget)
}

// TestNoAckBeforeFsync crashes right after each acknowledgement, with a
// slow fsync widening the window: an append acknowledged before the fsync
// covering it finished would be missing from the crash image.
func TestNoAckBeforeFsync(t *testing.T) {
	for i := 0; i < 20; i++ {
		mem := vfs.NewMemFS()
		ffs := vfs.NewFaultFS(mem)
		l := openTest(t, ffs)
		mustCreate(t, l, "t", TopicConfig{})
		ffs.SetSyncDelay(2 * time.Millisecond)
		var wg sync.WaitGroup
		acked := make(chan *ferry.Message, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				m := msg("t", "", fmt.Sprint(g))
				if err := l.Append(context.Background(), m); err == nil {
					acked <- m
				}
			}(g)
		}
		first := <-acked
		img := ffs.Crash(nil) // strict: only fsynced bytes survive
		wg.Wait()
		l.Close()
		l2 := openTest(t, img)
		found := false
		for _, m := range readAll(t, l2, "t", 0) {
			found = found || m.ID == first.ID
		}
		l2.Close()
		if !found {
			t.Fatalf("iteration %d: message acknowledged before its fsync completed", i)
		}
	}
}

// A message may carry a time of its own (an outbox relay sets the row's
// creation time). Deduplication ages IDs by when they were appended, not by
// that time: a retry of a message created long ago but appended a moment
// ago is still a duplicate, before and after a reopen (also when the
// recovery starts from a checkpoint) and when several partitions share a
// batch.
func TestDedupAgesByAppendTimeNotMessageTime(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	l := openTest(t, fs, WithClock(clock))
	mustCreate(t, l, "t", TopicConfig{Partitions: 3, DedupWindow: time.Minute})
	old := now.Add(-time.Hour)
	var origs []*ferry.Message
	for i := range 6 {
		m := msg("t", fmt.Sprint("k", i), "created an hour ago")
		m.Time = old
		origs = append(origs, m)
	}
	if err := l.Append(ctx, origs...); err != nil { // one batch, sections for several partitions
		t.Fatal(err)
	}
	retry := func(when string) {
		t.Helper()
		var again []*ferry.Message
		for _, o := range origs {
			m := msg("t", string(o.Key), "created an hour ago")
			m.ID, m.Time = o.ID, old
			again = append(again, m)
		}
		b := &Batch{Messages: again}
		if err := l.Commit(ctx, b); err != nil || b.Duplicates != len(origs) {
			t.Fatalf("%s: err=%v, %d of %d retries recognised as duplicates", when, err, b.Duplicates, len(origs))
		}
		for i, m := range again {
			if m.Offset != origs[i].Offset || m.Partition != origs[i].Partition {
				t.Fatalf("%s: retry %d resolved to %d/%d, want %d/%d", when, i, m.Partition, m.Offset, origs[i].Partition, origs[i].Offset)
			}
		}
	}
	advance(10 * time.Second)
	retry("while running")
	l.Close() // writes a checkpoint
	l = openTest(t, fs, WithClock(clock))
	advance(10 * time.Second)
	retry("after a reopen from a checkpoint")
	l.Close()
	names, err := fs.List(testDir + "/checkpoints")
	if err != nil || len(names) == 0 {
		t.Fatalf("checkpoints: %v %v", names, err)
	}
	for _, n := range names {
		if err := fs.Remove(testDir + "/checkpoints/" + n); err != nil {
			t.Fatal(err)
		}
	}
	l = openTest(t, fs, WithClock(clock))
	defer l.Close()
	advance(10 * time.Second)
	retry("after a reopen that replays the whole log")
	// A minute after the append, the IDs are forgotten.
	advance(time.Minute)
	b := &Batch{Messages: []*ferry.Message{{ID: origs[0].ID, Topic: "t", Key: origs[0].Key, Payload: []byte("x")}}}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 0 {
		t.Fatalf("past the window: err=%v dups=%d", err, b.Duplicates)
	}
}

// A topic name with a non-ASCII letter is refused naming that letter (not
// the first byte of its encoding) and saying that letters means ASCII.
func TestTopicNameErrorNamesTheCharacter(t *testing.T) {
	err := ValidateTopicName("zamówienia")
	if err == nil || !strings.Contains(err.Error(), "'ó' at byte 3") || !strings.Contains(err.Error(), "ASCII letters") {
		t.Fatalf("ValidateTopicName(zamówienia): %v", err)
	}
}

// A batch with Follows is written only when the log holds one of the
// messages it names (from this run or, after a reopen, an earlier one).
// A batch with After only when that batch was written. Refused, it writes
// nothing, and a batch queued behind it (by Follows or After) is refused
// as well, even when both are queued before either is written. A first
// message that is a duplicate is no pass by itself: its ID must be named.
func TestFollowsRefusesABatchAfterAGap(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	l := openTest(t, fs)
	mustCreate(t, l, "t", TopicConfig{Partitions: 1})
	mustCreate(t, l, "nodedup", TopicConfig{Partitions: 1, DedupWindow: -1})
	first := msg("t", "", "first")
	if err := l.Append(ctx, first); err != nil {
		t.Fatal(err)
	}
	end := func() uint64 { _, e, _ := l.Bounds("t", 0); return e }
	ids := func(ids ...ferry.ID) []ferry.ID { return ids }

	missing := ferry.NewID()
	if err := l.Commit(ctx, &Batch{Messages: []*ferry.Message{msg("t", "", "after a gap")}, Follows: ids(missing)}); !errors.Is(err, ErrNotFollowing) {
		t.Fatalf("a batch following a message not in the log: %v, want ErrNotFollowing", err)
	}
	again := msg("t", "", "first")
	again.ID = first.ID
	if err := l.Commit(ctx, &Batch{Messages: []*ferry.Message{again, msg("t", "", "new")}, Follows: ids(missing)}); !errors.Is(err, ErrNotFollowing) {
		t.Fatalf("a batch whose first message is an old duplicate, following a missing one: %v, want ErrNotFollowing", err)
	}
	if end() != 1 {
		t.Fatalf("the refused batches were written: the log ends at %d", end())
	}
	if err := l.Commit(ctx, &Batch{Messages: []*ferry.Message{msg("nodedup", "", "x")}, Follows: ids(missing)}); !errors.Is(err, ErrNotFollowing) {
		t.Fatalf("a topic without a dedup window cannot tell: %v, want ErrNotFollowing", err)
	}

	// Queued together: the refusal of the first refuses the second, by
	// Follows and by After.
	queue := func(a, b *Batch) (error, error) {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		wg.Add(2)
		l.CommitAsync(ctx, a, func(_ *Batch, err error) { errs[0] = err; wg.Done() })
		l.CommitAsync(ctx, b, func(_ *Batch, err error) { errs[1] = err; wg.Done() })
		wg.Wait()
		return errs[0], errs[1]
	}
	gapped := msg("t", "", "gapped")
	gapped.ID = ferry.NewID()
	a := &Batch{Messages: []*ferry.Message{gapped}, Follows: ids(missing)}
	if e0, e1 := queue(a, &Batch{Messages: []*ferry.Message{msg("t", "", "behind")}, Follows: ids(gapped.ID)}); !errors.Is(e0, ErrNotFollowing) || !errors.Is(e1, ErrNotFollowing) {
		t.Fatalf("a gap and the batch following it: %v, %v; want both ErrNotFollowing", e0, e1)
	}
	a = &Batch{Messages: []*ferry.Message{msg("t", "", "gapped")}, Follows: ids(missing)}
	if e0, e1 := queue(a, &Batch{Messages: []*ferry.Message{msg("t", "", "behind")}, After: a}); !errors.Is(e0, ErrNotFollowing) || !errors.Is(e1, ErrNotFollowing) {
		t.Fatalf("a gap and the batch after it: %v, %v; want both ErrNotFollowing", e0, e1)
	}
	if end() != 1 {
		t.Fatalf("refused batches were written: the log ends at %d", end())
	}
	// Queued together, in order: both written.
	second := msg("t", "", "second")
	second.ID = ferry.NewID()
	if e0, e1 := queue(&Batch{Messages: []*ferry.Message{second}, Follows: ids(first.ID)}, &Batch{Messages: []*ferry.Message{msg("t", "", "third")}, Follows: ids(second.ID)}); e0 != nil || e1 != nil || end() != 3 {
		t.Fatalf("two batches in order: %v, %v; the log ends at %d, want 3", e0, e1, end())
	}
	a = &Batch{Messages: []*ferry.Message{msg("t", "", "fourth")}}
	if e0, e1 := queue(a, &Batch{Messages: []*ferry.Message{msg("t", "", "fifth")}, After: a}); e0 != nil || e1 != nil || end() != 5 {
		t.Fatalf("a batch and one after it: %v, %v; the log ends at %d, want 5", e0, e1, end())
	}
	last := a.Messages[0]

	// After a reopen the log still knows what it holds.
	l.Close()
	l = openTest(t, fs)
	defer l.Close()
	sixth := msg("t", "", "sixth")
	if err := l.Commit(ctx, &Batch{Messages: []*ferry.Message{sixth}, Follows: ids(last.ID)}); err != nil {
		t.Fatalf("after a reopen, a batch following one written before: %v", err)
	}
	// A retry of a batch in the log, naming itself: a duplicate.
	retry := msg("t", "", "sixth")
	retry.ID = sixth.ID
	b := &Batch{Messages: []*ferry.Message{retry}, Follows: ids(missing, sixth.ID)}
	if err := l.Commit(ctx, b); err != nil || b.Duplicates != 1 || retry.Offset != sixth.Offset {
		t.Fatalf("a retry of a batch in the log: %v, %d duplicates, offset %d; want the first's offset %d", err, b.Duplicates, retry.Offset, sixth.Offset)
	}
	if end() != 6 {
		t.Fatalf("the log ends at %d, want 6", end())
	}
}

// AlterTopic changes retention and nothing else, durably; DeleteOffsets
// deletes a group's offsets (one partition, one topic, or all), and a
// deletion holds across reopens with delta checkpoints behind it (an older
// checkpoint of the chain holds the offset) and without checkpoints.
func TestAlterTopicAndDeleteOffsetsLast(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	opts := []Opt{WithSegmentBytes(64 << 10), WithMaxMessageBytes(24 << 10), WithMaxBatchBytes(32 << 10), WithMaxGroupBytes(16 << 10)}
	l := openTest(t, fs, opts...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 2, RetentionAge: time.Hour})
	mustCreate(t, l, "u", TopicConfig{Partitions: 1})
	info, _ := l.Topic("t")
	c := info.Config
	c.RetentionAge, c.RetentionBytes = 2*time.Hour, 1<<20
	if err := l.AlterTopic(ctx, "t", c); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(*TopicConfig){
		"partitions":   func(c *TopicConfig) { c.Partitions = 3 },
		"compaction":   func(c *TopicConfig) { c.Compact = true },
		"dedup window": func(c *TopicConfig) { c.DedupWindow = time.Hour },
	} {
		b := c
		bad(&b)
		if err := l.AlterTopic(ctx, "t", b); !errors.Is(err, ferry.ErrInvalidArgument) || !strings.Contains(err.Error(), name) {
			t.Errorf("alter of the %s: %v, want ErrInvalidArgument naming it", name, err)
		}
	}
	if err := l.AlterTopic(ctx, "nope", c); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Errorf("alter of a missing topic: %v", err)
	}
	commit := func(group, topic string, p int32, off uint64) {
		t.Helper()
		if err := l.CommitOffsets(ctx, group, Offset{Topic: topic, Partition: p, Offset: off}); err != nil {
			t.Fatal(err)
		}
	}
	roll := func() { // enough to roll a segment: a delta checkpoint
		t.Helper()
		for range 3 {
			if err := l.Append(ctx, msg("u", "", strings.Repeat("x", 20<<10))); err != nil {
				t.Fatal(err)
			}
		}
	}
	commit("g", "t", 0, 0)
	commit("g", "t", 1, 0)
	commit("g", "u", 0, 1)
	commit("h", "u", 0, 2)
	roll()
	if err := l.DeleteOffsets(ctx, "g", "t", 0); err != nil {
		t.Fatal(err)
	}
	roll()
	if err := l.DeleteOffsets(ctx, "h", ""); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteOffsets(ctx, "g", "nope"); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Errorf("delete offsets on a missing topic: %v", err)
	}
	if err := l.CommitOffsets(ctx, "g", Offset{Topic: "t", Partition: 0, Offset: deletedOffset}); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Errorf("a commit of the deleted marker: %v", err)
	}
	check := func(when string) {
		t.Helper()
		if info, _ := l.Topic("t"); info.Config.RetentionAge != 2*time.Hour || info.Config.RetentionBytes != 1<<20 {
			t.Errorf("%s: t's retention %v and %d bytes, want 2h and 1 MiB", when, info.Config.RetentionAge, info.Config.RetentionBytes)
		}
		if _, ok := l.CommittedOffset("g", "t", 0); ok {
			t.Errorf("%s: g's deleted offset on t/0 is back", when)
		}
		if off, ok := l.CommittedOffset("g", "t", 1); !ok || off != 0 {
			t.Errorf("%s: g's offset on t/1: %d %v", when, off, ok)
		}
		groups := l.Groups()
		if _, ok := groups["h"]; ok || len(groups["g"]) != 2 {
			t.Errorf("%s: groups %v, want g with t/1 and u/0, and no h", when, groups)
		}
	}
	check("before a reopen")
	l.Close()
	l = openTest(t, fs, opts...)
	check("after a reopen")
	commit("h", "u", 0, 3) // a deleted group comes back with a new commit
	if off, ok := l.CommittedOffset("h", "u", 0); !ok || off != 3 {
		t.Errorf("h's new commit: %d %v", off, ok)
	}
	if err := l.DeleteOffsets(ctx, "h", ""); err != nil {
		t.Fatal(err)
	}
	l.Close()
	names, _ := fs.List(testDir + "/" + checkpointDir)
	for _, n := range names {
		if err := fs.Remove(testDir + "/" + checkpointDir + "/" + n); err != nil {
			t.Fatal(err)
		}
	}
	l = openTest(t, fs, opts...)
	defer l.Close()
	check("after a reopen without checkpoints")
}
