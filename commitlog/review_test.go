package commitlog

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// TestReviewRetentionEntrySpanUnbounded: state.go promises that an entry's
// age spread is bounded by maxEntryAge (1 s), so that an entry's older
// records outlive their retention by at most that. A steady trickle of
// appends 0.5 s apart keeps merging into one entry (each batch is compared
// with the entry's *newest* append, not its oldest), so a record appended
// 30 s ago survives a 5 s retention indefinitely.
func TestReviewRetentionEntrySpanUnbounded(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	l := openTest(t, vfs.NewMemFS(), cleanerOpts(clock)...)
	defer l.Close()
	mustCreate(t, l, "r", TopicConfig{RetentionAge: 5 * time.Second, DedupWindow: time.Second}) // the cleaner keeps what the dedup window covers
	first := msg("r", "", "oldest")
	if err := l.Append(ctx, first); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 60; i++ {
		clock.Advance(500 * time.Millisecond)
		if err := l.Append(ctx, msg("r", "", "trickle")); err != nil {
			t.Fatal(err)
		}
	}
	// now = 30 s after "oldest" was appended; retention is 5 s (+1 s slack).
	if _, err := l.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range readAll(t, l, "r", 0) {
		if m.ID == first.ID {
			t.Fatalf("a record appended 30 s ago survives a 5 s retention (entry age spread is unbounded: %d entries)", len(indexOf(l)["r"][0].entries))
		}
	}
}

// TestReviewTornTailSwallowsCorruption: a bit flip in the length field of
// a batch in the last segment, followed by a valid, acknowledged batch of
// consumer offsets, is corruption in the middle of the log. isTornTail
// discards the later batch as a "copy of what the log already holds"
// (copiesKnown: appended no later than the last replayed batch, and a
// control section holding only offset commits counts as known), so Open
// silently cuts two acknowledged batches instead of refusing.
func TestReviewTornTailSwallowsCorruption(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	mem := vfs.NewMemFS()
	l := openTest(t, mem, WithClock(clock.Now))
	mustCreate(t, l, "t", TopicConfig{})
	clock.Advance(time.Millisecond)
	if err := l.Append(ctx, msg("t", "", "a")); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Millisecond)
	b := msg("t", "", "b")
	if err := l.Append(ctx, b); err != nil { // acknowledged
		t.Fatal(err)
	}
	clock.Advance(-time.Second)                                                                    // NTP steps the clock back
	if err := l.CommitOffsets(ctx, "g", Offset{Topic: "t", Partition: 0, Offset: 2}); err != nil { // acknowledged
		t.Fatal(err)
	}
	img := mem.CrashClone(nil) // power loss: only synced data
	l.Close()
	seg := lastSegment(t, img)
	starts, _ := batchStarts(t, img, seg)
	if len(starts) < 4 {
		t.Fatalf("want 4 batches, have %d", len(starts))
	}
	bPos := starts[len(starts)-2]
	// Bit rot: the top byte of b's length field.
	if err := img.FlipBit(seg, bPos+7, 0); err != nil {
		t.Fatal(err)
	}
	l2, err := Open(ctx, testDir, WithFS(img), WithClock(clock.Now))
	if err == nil {
		r := l2.Recovery()
		_, end, _ := l2.Bounds("t", 0)
		_, committed := l2.CommittedOffset("g", "t", 0)
		l2.Close()
		t.Fatalf("corrupt batch followed by a valid acknowledged batch was cut as a torn tail (recovery %+v; end %d, want 2; offset committed: %v)", r, end, committed)
	}
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.File != seg || ce.Offset != bPos {
		t.Fatalf("open: %v, want a CorruptionError at %s:%d", err, seg, bPos)
	}
}

// TestReviewOffsetForTimeAfterClose: after Close, OffsetForTime does not
// report ferry.ErrClosed: it reads index entries whose segments closeFiles
// removed and fails with ErrOffsetOutOfRange ("segment was removed while
// reading"), which a consumer takes for a bad offset.
func TestReviewOffsetForTimeAfterClose(t *testing.T) {
	ctx := context.Background()
	l := openTest(t, vfs.NewMemFS())
	mustCreate(t, l, "t", TopicConfig{})
	if err := l.Append(ctx, msg("t", "", "x")); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := l.OffsetForTime("t", 0, time.Unix(0, 0))
	if err != nil && !errors.Is(err, ferry.ErrClosed) {
		t.Fatalf("OffsetForTime after Close: %v, want success or ErrClosed", err)
	}
}

// TestReviewReadRacingClose: a Read that passed its closed check when
// Close runs reads a segment that closeFiles removed and fails with
// ErrOffsetOutOfRange for an offset inside [start, end), not ErrClosed.
// (The clock hook only parks the reader between its closed check and its
// segment read, where the scheduler may park it anyway.)
func TestReviewReadRacingClose(t *testing.T) {
	ctx := context.Background()
	var armed atomic.Bool
	entered, gate := make(chan struct{}), make(chan struct{})
	clock := func() time.Time {
		if armed.CompareAndSwap(true, false) {
			close(entered)
			<-gate
		}
		return time.Now()
	}
	l := openTest(t, vfs.NewMemFS(), WithClock(clock))
	mustCreate(t, l, "t", TopicConfig{})
	if err := l.Append(ctx, msg("t", "", "x")); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	errc := make(chan error, 1)
	go func() {
		_, err := l.Read("t", 0, 0, ReadOpts{})
		errc <- err
	}()
	<-entered
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	close(gate)
	if err := <-errc; err != nil && !errors.Is(err, ferry.ErrClosed) {
		t.Fatalf("Read racing Close: %v, want success or ErrClosed", err)
	}
}

// TestReviewDedupRebuildForgetsNewest: at runtime the dedup window
// remembers at least the last DedupMaxIDs IDs. rebuildDedup spends the
// budget on index entries sorted by append time; the sections of one
// group commit share it, so it takes partition 0's section and skips
// partition 1's, which holds the newest IDs. After a reopen, a retry of
// the last acknowledged message is written a second time.
func TestReviewDedupRebuildForgetsNewest(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewMemFS()
	l := openTest(t, mem)
	mustCreate(t, l, "d", TopicConfig{Partitions: 2, DedupWindow: time.Hour, DedupMaxIDs: 10})
	var batch []*ferry.Message
	for i := 0; i < 20; i++ {
		m := msg("d", "", fmt.Sprint(i))
		m.PinPartition, m.Partition = true, int32(i/10)
		batch = append(batch, m)
	}
	if err := l.Append(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	last := batch[19]
	retry := func(l *Log) int {
		b := &Batch{Messages: []*ferry.Message{{Topic: "d", ID: last.ID, Payload: []byte("19"), PinPartition: true, Partition: 1}}}
		if err := l.Commit(ctx, b); err != nil {
			t.Fatal(err)
		}
		return b.Duplicates
	}
	if d := retry(l); d != 1 {
		t.Fatalf("setup: retry before reopen: %d duplicates, want 1", d)
	}
	img := mem.CrashClone(nil)
	l.Close()
	l2 := openTest(t, img)
	defer l2.Close()
	if d := retry(l2); d != 1 {
		_, end, _ := l2.Bounds("d", 1)
		t.Fatalf("after reopen, a retry of the last acknowledged ID was written again (end of partition 1: %d, want 10)", end)
	}
}

// TestReviewTornBatchCarryingForeignBatch: the torn final batch of an
// ordinary crash (an append never acknowledged) carries, in a message
// payload, the bytes of a valid ferry batch of some other log (a producer
// may publish anything; here one for topic ID 77). isTornTail takes any
// valid batch after the bad batch's first byte that is not a copy of
// known records for a later write, so the tail counts as corruption and
// Open refuses the log after a plain crash (Regress11 covers only copies
// of this log's own records).
func TestReviewTornBatchCarryingForeignBatch(t *testing.T) {
	ctx := context.Background()
	foreign := make([]byte, batchHeaderSize)
	fm := &ferry.Message{ID: ferry.NewID(), Offset: 1000, Time: time.Unix(1, 0), Payload: []byte("other log")}
	foreign = encodeSection(foreign, 77, 0, []*ferry.Message{fm}, 1)
	putBatchHeader(foreign, 0, 1, 1)
	if nextValidBatch(foreign) != 0 {
		t.Fatal("setup: not a valid batch")
	}
	mem := vfs.NewMemFS()
	l := openTest(t, mem)
	mustCreate(t, l, "t", TopicConfig{})
	if err := l.Append(ctx, msg("t", "", "before")); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ctx, &ferry.Message{Topic: "t", Payload: append([]byte("carry:"), foreign...)}); err != nil {
		t.Fatal(err)
	}
	img := mem.CrashClone(nil)
	l.Close()
	seg := lastSegment(t, img)
	_, end, _ := scanBatches(t, img, seg)
	f, _ := img.OpenRW(seg)
	f.Truncate(end - 1) // the crash tore the last write: it was never acknowledged
	f.Sync()
	f.Close()
	l2, err := Open(ctx, testDir, WithFS(img))
	if err != nil {
		t.Fatalf("open after a torn (unacknowledged) final write: %v", err)
	}
	l2.Close()
}
