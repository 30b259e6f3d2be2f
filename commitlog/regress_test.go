package commitlog

// Regression tests for the defects of the commitlog issue, one test (or a
// pair) per defect, named TestRegress<N><Short> after the numbers.
// Each asserts the fixed behaviour, so each fails on the code that has the
// defect. None sleeps for correctness: time comes from an injected clock,
// and a hang is bounded by a timeout that fails the test.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// rgWithin runs fn and reports whether it returned within d (a goroutine
// still blocked after d is left behind: the test fails anyway).
func rgWithin(d time.Duration, fn func()) bool {
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// rgWaitFor waits until cond holds (synchronization only, never a
// correctness condition), failing after 2 s.
func rgWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// rgBlockNextSync makes the next segment fsync block until the returned
// release is called; entered is closed once the writer is inside it.
func rgBlockNextSync(ffs *vfs.FaultFS) (entered <-chan struct{}, release func()) {
	var armed atomic.Bool
	armed.Store(true)
	in, gate := make(chan struct{}), make(chan struct{})
	ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
		if op == vfs.OpSync && strings.HasSuffix(path, segSuffix) && armed.CompareAndSwap(true, false) {
			close(in)
			<-gate
		}
		return nil
	})
	var once sync.Once
	return in, func() { once.Do(func() { close(gate) }) }
}

// rgIDs returns the IDs of every message of a partition.
func rgIDs(t *testing.T, l *Log, topic string, part int32) map[ferry.ID]*ferry.Message {
	t.Helper()
	out := map[ferry.ID]*ferry.Message{}
	for _, m := range readAll(t, l, topic, part) {
		out[m.ID] = m
	}
	return out
}

func rgCopy(m *ferry.Message) *ferry.Message {
	return &ferry.Message{ID: m.ID, Topic: m.Topic, Key: m.Key, Payload: m.Payload}
}

// TestRegress1UnsyncedBytesTrustedByRecovery: an append whose segment
// fsync failed (the caller got ErrLogFailed) leaves its bytes in the page
// cache. After Close and a reopen on the same filesystem, recovery must
// not acknowledge a retry of it as a duplicate of bytes that were never
// made durable: whatever the retry is acknowledged as (new or duplicate)
// must survive a power loss right after (strict crash clone).
func TestRegress1UnsyncedBytesTrustedByRecovery(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  []Opt
		batch func() []*ferry.Message
	}{
		{"zero-ahead off", []Opt{WithZeroAhead(false)}, func() []*ferry.Message {
			return []*ferry.Message{msg("t", "k", "never fsynced")}
		}},
		{"defaults, a 2 MB group that grows the file", nil, func() []*ferry.Message {
			var b []*ferry.Message
			for i := range 4 {
				b = append(b, msg("t", "k", fmt.Sprintf("%d%s", i, strings.Repeat("x", 512<<10))))
			}
			return b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clock := newTestClock()
			opts := append([]Opt{WithClock(clock.Now), WithCleanInterval(24 * time.Hour)}, tc.opts...)
			mem := vfs.NewMemFS()
			ffs := vfs.NewFaultFS(mem)
			l := openTest(t, ffs, opts...)
			mustCreate(t, l, "t", TopicConfig{})
			if err := l.Append(ctx, msg("t", "k", "durable")); err != nil {
				t.Fatal(err)
			}
			ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
				if op == vfs.OpSync && strings.HasSuffix(path, segSuffix) {
					return vfs.EIO
				}
				return nil
			})
			orig := tc.batch()
			if err := l.Append(ctx, orig...); !errors.Is(err, ferry.ErrLogFailed) {
				t.Fatalf("append with failing fsync: %v, want ErrLogFailed", err)
			}
			l.Close()
			ffs.SetInjector(nil)

			l2 := openTest(t, mem, opts...) // same MemFS: the page cache still holds the bytes
			var retry []*ferry.Message
			for _, m := range orig {
				retry = append(retry, rgCopy(m))
			}
			b := &Batch{Messages: retry}
			if err := l2.Commit(ctx, b); err != nil {
				t.Fatalf("retry after reopen: %v", err)
			}
			img := mem.CrashClone(nil) // power loss now: only fsynced bytes survive
			l2.Close()
			l3 := openTest(t, img, opts...)
			defer l3.Close()
			got := rgIDs(t, l3, "t", 0)
			for i, m := range orig {
				if got[m.ID] == nil {
					t.Fatalf("retry acknowledged (Duplicates=%d) but message %d of it is gone after a power loss: recovery trusted bytes that were never fsynced", b.Duplicates, i)
				}
			}
		})
	}
}

// TestRegress2OversizeBatchChangesState: a Commit whose consumer offsets
// encode far larger than prepare estimates (400 offsets with a 255-byte
// group on 64 KiB segments) must be refused up front with
// ErrInvalidArgument, changing nothing: a retry of its message is written
// as new at the old high watermark, and another request that shared its
// group commit succeeds.
func TestRegress2OversizeBatchChangesState(t *testing.T) {
	ctx := context.Background()
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	// One group in flight: the writer waits in each group's fsync.
	l := openTest(t, ffs, append([]Opt{WithCleanInterval(24 * time.Hour), withMaxInflight(1)}, smallSegments...)...)
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	if err := l.Append(ctx, msg("t", "", "first")); err != nil {
		t.Fatal(err)
	}
	_, hw, _ := l.Bounds("t", 0)

	// Hold the writer in an fsync so that the next two requests queue up
	// and are collected into one group.
	entered, release := rgBlockNextSync(ffs)
	defer release()
	errA := make(chan error, 1)
	go func() { errA <- l.Append(ctx, msg("t", "", "a")) }()
	<-entered
	errB := make(chan error, 1)
	go func() { errB <- l.Append(ctx, msg("t", "", "b")) }()
	rgWaitFor(t, "b queued", func() bool { return len(l.reqs) >= 1 })
	group := strings.Repeat("g", 255)
	var offs []Offset
	for i := range 400 {
		offs = append(offs, Offset{Topic: "t", Partition: 0, Offset: uint64(i)})
	}
	cMsg := msg("t", "", "c")
	errC := make(chan error, 1)
	go func() { errC <- l.Commit(ctx, &Batch{Messages: []*ferry.Message{cMsg}, Group: group, Offsets: offs}) }()
	var cErr error
	cDone := false
	rgWaitFor(t, "c refused or queued", func() bool {
		select {
		case cErr = <-errC:
			cDone = true
			return true
		default:
			return len(l.reqs) >= 2
		}
	})
	release()
	if err := <-errA; err != nil {
		t.Fatalf("append a: %v", err)
	}
	if !cDone {
		cErr = <-errC
	}
	if !errors.Is(cErr, ferry.ErrInvalidArgument) {
		t.Fatalf("oversize commit: %v, want ErrInvalidArgument", cErr)
	}
	err := <-errB
	if err != nil {
		t.Errorf("another request in the oversize batch's group failed with it: %v", err)
	}
	_, hwAfter, _ := l.Bounds("t", 0)
	if err == nil && hwAfter != hw+2 {
		t.Errorf("high watermark %d after a and b, want %d", hwAfter, hw+2)
	}
	retry := rgCopy(cMsg)
	b := &Batch{Messages: []*ferry.Message{retry}}
	if err := l.Commit(ctx, b); err != nil {
		t.Fatalf("retry of the refused message: %v", err)
	}
	if b.Duplicates != 0 {
		t.Fatalf("retry of the refused message acknowledged as a duplicate of offset %d, which holds nothing (high watermark %d)", retry.Offset, hwAfter)
	}
	if retry.Offset != hwAfter {
		t.Fatalf("retry written at offset %d, want the high watermark %d: the refused batch took offsets", retry.Offset, hwAfter)
	}
}

// rgCleanedImage builds a log whose cleaner has deleted segments (retention
// expired everything before a clock jump) and whose consumer offset was
// committed in a deleted segment. With keepSeg0 a topic without retention
// keeps segment 0 alive, so the deleted IDs leave a gap. It returns a
// strict crash image taken after Clean (everything durable) and the IDs of
// the segments deleted.
func rgCleanedImage(t *testing.T, clock *testClock, keepSeg0 bool) (*vfs.MemFS, []uint32) {
	t.Helper()
	ctx := context.Background()
	mem := vfs.NewMemFS()
	l := openTest(t, mem, cleanerOpts(clock)...)
	defer l.Close()
	if keepSeg0 {
		mustCreate(t, l, "keep", TopicConfig{})
		if err := l.Append(ctx, msg("keep", "", "pins segment 0")); err != nil {
			t.Fatal(err)
		}
	}
	mustCreate(t, l, "old", TopicConfig{RetentionAge: time.Hour})
	key := func(i int) string { return fmt.Sprint(i) }
	fill(t, l, "old", 200, key)
	if err := l.CommitOffsets(ctx, "g", Offset{Topic: "old", Partition: 0, Offset: 123}); err != nil {
		t.Fatal(err)
	}
	fill(t, l, "old", 400, key)
	clock.Advance(2 * time.Hour)
	fill(t, l, "old", 200, key)
	before, _ := l.listSegments()
	st, err := l.Clean(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := l.listSegments()
	if st.SegmentsDeleted == 0 || (after[0] == 0) != keepSeg0 {
		t.Fatalf("setup: cleaner %+v, segments %v -> %v", st, before, after)
	}
	have := map[uint32]bool{}
	for _, id := range after {
		have[id] = true
	}
	var deleted []uint32
	for _, id := range before {
		if !have[id] {
			deleted = append(deleted, id)
		}
	}
	return mem.CrashClone(nil), deleted
}

type rgState struct {
	start, end uint64
	committed  uint64
	ok         bool
}

func rgStateOf(l *Log) (rgState, error) {
	s, e, err := l.Bounds("old", 0)
	off, ok := l.CommittedOffset("g", "old", 0)
	return rgState{s, e, off, ok}, err
}

// rgCrashDuringClose opens a copy of base, crashes at each mutating
// operation of Close (with several seeds shaping what unsynced data
// survives), and calls check with the image each crash left.
func rgCrashDuringClose(t *testing.T, base *vfs.MemFS, opts []Opt, check func(img *vfs.MemFS, at int64, seed uint64)) {
	t.Helper()
	ffs := vfs.NewFaultFS(base.CrashClone(nil))
	l := openTest(t, ffs, opts...)
	ops0 := ffs.MutatingOps()
	l.Close()
	n := ffs.MutatingOps() - ops0
	for at := int64(1); at <= n+1; at++ {
		for seed := uint64(0); seed < 8; seed++ {
			ffs := vfs.NewFaultFS(base.CrashClone(nil))
			l := openTest(t, ffs, opts...)
			rng := rand.New(rand.NewPCG(seed, uint64(at)))
			ffs.CrashAt(ffs.MutatingOps()+at, rng)
			l.Close()
			img := ffs.Crashed()
			if img == nil {
				img = ffs.Crash(rng)
			}
			check(img, at, seed)
		}
	}
}

// TestRegress3CheckpointRewrittenInPlace: reopening a log whose segment 0
// the cleaner deleted and closing it without appends writes a checkpoint
// with the same name as the one it loaded. A crash at any point of that
// Close must leave a log that opens, with its state intact.
func TestRegress3CheckpointRewrittenInPlace(t *testing.T) {
	clock := newTestClock()
	base, _ := rgCleanedImage(t, clock, false)
	opts := cleanerOpts(clock)
	l := openTest(t, base.CrashClone(nil), opts...)
	want, _ := rgStateOf(l)
	l.Close()
	rgCrashDuringClose(t, base, opts, func(img *vfs.MemFS, at int64, seed uint64) {
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(img)}, opts...)...)
		if err != nil {
			t.Fatalf("crash at op %d of Close (seed %d): open: %v", at, seed, err)
		}
		defer l.Close()
		if got, err := rgStateOf(l); err != nil || got != want {
			t.Fatalf("crash at op %d of Close (seed %d): state %+v (%v), want %+v", at, seed, got, err, want)
		}
	})
}

// TestRegress4MissingSegmentNotDetected: the same crash with segment 0
// still present (a gap of deleted segments after it) must not open
// silently with the consumer offsets that lived in the deleted segments
// gone: either Open refuses with ErrCorrupt naming a missing segment, or
// the state is intact.
func TestRegress4MissingSegmentNotDetected(t *testing.T) {
	clock := newTestClock()
	base, deleted := rgCleanedImage(t, clock, true)
	opts := cleanerOpts(clock)
	l := openTest(t, base.CrashClone(nil), opts...)
	want, _ := rgStateOf(l)
	l.Close()
	if !want.ok {
		t.Fatal("setup: committed offset missing before the crash")
	}
	rgCrashDuringClose(t, base, opts, func(img *vfs.MemFS, at int64, seed uint64) {
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(img)}, opts...)...)
		if err != nil {
			named := false
			for _, id := range deleted {
				named = named || strings.Contains(err.Error(), segName(id))
			}
			if !errors.Is(err, ferry.ErrCorrupt) || !named {
				t.Fatalf("crash at op %d of Close (seed %d): open failed with %v, want ErrCorrupt naming a missing segment", at, seed, err)
			}
			return
		}
		defer l.Close()
		if got, err := rgStateOf(l); err != nil || got != want {
			t.Fatalf("crash at op %d of Close (seed %d): opened silently with state %+v (%v), want %+v (segments %v are missing)", at, seed, got, err, want, deleted)
		}
	})
}

// TestRegress5ReplayBuildsDifferentIndex: retention drops index entries in
// memory only, so a replay without a checkpoint merges a later batch into
// an entry the running log had dropped, and the compacted (relocated)
// batch then overlaps it. After such a replay, Read must return each
// offset once, in order, none below the start, and the same records the
// running log served.
func TestRegress5ReplayBuildsDifferentIndex(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	mem := vfs.NewMemFS()
	opts := cleanerOpts(clock)
	l := openTest(t, mem, opts...)
	mustCreate(t, l, "c", TopicConfig{Compact: true, RetentionAge: time.Hour})
	mustCreate(t, l, "other", TopicConfig{})
	key := func(i int) string { return fmt.Sprint("k", i%10) }
	fill(t, l, "c", 10, key) // A: offsets 0-9
	clock.Advance(2 * time.Hour)
	if _, err := l.Clean(ctx); err != nil { // retention drops A (in memory)
		t.Fatal(err)
	}
	fill(t, l, "c", 10, key)                                              // B: offsets 10-19, right after A in segment 0
	fill(t, l, "other", 200, func(i int) string { return fmt.Sprint(i) }) // roll: seal segment 0
	fill(t, l, "c", 5, key)                                               // C: offsets 20-24 overwrite k0-k4
	clock.Advance(3 * time.Minute)                                        // past the dedup window, inside which the cleaner keeps everything
	st, err := l.Clean(ctx)                                               // relocates B's live k5-k9
	if err != nil {
		t.Fatal(err)
	}
	if st.RecordsRelocated == 0 {
		t.Fatalf("setup: nothing relocated: %+v", st)
	}
	type rec struct {
		off     uint64
		payload string
	}
	snap := func(l *Log) (start uint64, out []rec) {
		start, _, _ = l.Bounds("c", 0)
		for _, m := range readAll(t, l, "c", 0) {
			out = append(out, rec{m.Offset, string(m.Payload)})
		}
		return start, out
	}
	wantStart, want := snap(l)
	l.Close()
	removeCheckpoints(t, mem)
	l = openTest(t, mem, opts...)
	defer l.Close()
	res, err := l.Read("c", 0, 0, ReadOpts{})
	if err == nil {
		prev := int64(-1)
		var offs []uint64
		bad := false
		for _, m := range res.Messages {
			offs = append(offs, m.Offset)
			bad = bad || int64(m.Offset) <= prev || m.Offset < wantStart
			prev = int64(m.Offset)
		}
		if bad {
			t.Fatalf("after a replay one Read(0) returned offsets %v (running log: start %d, %d records): offsets twice, out of order or expired", offs, wantStart, len(want))
		}
	} else if !errors.Is(err, ferry.ErrOffsetOutOfRange) {
		t.Fatal(err)
	}
	gotStart, got := snap(l)
	if gotStart != wantStart || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("index after replay differs from the running log's:\n got start %d %v\nwant start %d %v", gotStart, got, wantStart, want)
	}
}

// TestRegress6RollCheckpointCountsInFlight: the checkpoint a roll writes
// must not count the offsets of the group being written. After a crash
// between that checkpoint and the new segment's first write, the high
// watermark is the last durable record + 1 and Fetch at end-1 returns.
func TestRegress6RollCheckpointCountsInFlight(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewMemFS()
	ffs := vfs.NewFaultFS(mem)
	l := openTest(t, ffs, append([]Opt{WithCleanInterval(24 * time.Hour)}, smallSegments...)...)
	mustCreate(t, l, "t", TopicConfig{})
	// The roll's checkpoint is written, then creating the next segment
	// fails: the disk as a crash at that instant would leave it.
	ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
		if op == vfs.OpCreate && strings.HasSuffix(path, segSuffix) {
			return vfs.EIO
		}
		return nil
	})
	last := int64(-1)
	for i := 0; ; i++ {
		if i > 1000 {
			t.Fatal("setup: the log never rolled")
		}
		m := msg("t", "", fmt.Sprintf("%d|%0500d", i, 0))
		if err := l.Append(ctx, m); err != nil {
			break
		}
		last = int64(m.Offset)
	}
	img := mem.CrashClone(nil)
	l.Close()
	l2 := openTest(t, img, smallSegments...)
	defer l2.Close()
	if l2.Recovery().Checkpoint != checkpointName(1, 0) {
		t.Fatalf("setup: recovered from %q, want the roll's checkpoint", l2.Recovery().Checkpoint)
	}
	_, end, _ := l2.Bounds("t", 0)
	msgs := readAll(t, l2, "t", 0)
	if n := len(msgs); n == 0 || int64(msgs[n-1].Offset) != last {
		t.Fatalf("setup: last record after recovery %v, want %d", msgs[len(msgs)-1].Offset, last)
	}
	if end != uint64(last)+1 {
		t.Errorf("high watermark %d after the crash, last record %d: want %d", end, last, last+1)
	}
	fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if res, err := l2.Fetch(fctx, "t", 0, end-1, ReadOpts{}); err != nil || len(res.Messages) == 0 {
		t.Errorf("Fetch(end-1=%d) blocked (no record there): %v", end-1, err)
	}
}

// TestRegress7DedupForgetsCompacted: a message the cleaner could compact
// away (v1, then v2 for the same key) must still be remembered by
// deduplication after a restart within the window, so that a retry of v1
// does not make it the key's latest value. The cleaner leaves records
// inside the dedup window alone (the window is rebuilt from them); past
// the window it compacts v1 away.
func TestRegress7DedupForgetsCompacted(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	mem := vfs.NewMemFS()
	opts := cleanerOpts(clock)
	l := openTest(t, mem, opts...)
	mustCreate(t, l, "c", TopicConfig{Compact: true, DedupWindow: 10 * time.Minute})
	mustCreate(t, l, "other", TopicConfig{})
	v1, v2 := msg("c", "k", "v1"), msg("c", "k", "v2")
	for _, m := range []*ferry.Message{v1, v2} {
		if err := l.Append(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	fill(t, l, "other", 200, func(i int) string { return fmt.Sprint(i) }) // roll: seal v1 and v2
	if st, err := l.Clean(ctx); err != nil || st.RecordsCompacted != 0 {
		t.Fatalf("clean inside the dedup window compacted records a retry may still need: %+v %v", st, err)
	}
	l.Close()
	clock.Advance(time.Minute)
	l = openTest(t, mem, opts...)
	defer l.Close()
	b := &Batch{Messages: []*ferry.Message{rgCopy(v1)}}
	if err := l.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	if b.Duplicates != 1 {
		t.Errorf("retry of compacted v1 within the dedup window after a restart was appended again (Duplicates=%d)", b.Duplicates)
	}
	if got := latestByKey(t, l, "c")["k"]; got != "v2" {
		t.Errorf("latest value of k is %q, want v2", got)
	}
	clock.Advance(10 * time.Minute)
	if st, err := l.Clean(ctx); err != nil || st.RecordsCompacted == 0 {
		t.Fatalf("clean past the dedup window compacted nothing: %+v %v", st, err)
	}
	if got := latestByKey(t, l, "c")["k"]; got != "v2" {
		t.Errorf("after compaction the latest value of k is %q, want v2", got)
	}
}

// TestRegress8aCarriedRequestDroppedOnClose: a Sync queued behind an
// append when Close begins ends up in the writer's carry while it drains;
// it must still be answered (success or ErrClosed), never left waiting.
// The writer's choice between the queue and the stop signal is random, so
// the scenario is repeated.
func TestRegress8aCarriedRequestDroppedOnClose(t *testing.T) {
	ctx := context.Background()
	for iter := 0; iter < 24; iter++ {
		ffs := vfs.NewFaultFS(vfs.NewMemFS())
		l := openTest(t, ffs, WithCleanInterval(24*time.Hour), withMaxInflight(1)) // the writer waits in each fsync
		mustCreate(t, l, "t", TopicConfig{})
		entered, release := rgBlockNextSync(ffs)
		errs := make(chan error, 3)
		go func() { errs <- l.Append(ctx, msg("t", "", "a")) }()
		<-entered
		go func() { errs <- l.Append(ctx, msg("t", "", "b")) }()
		rgWaitFor(t, "append queued", func() bool { return len(l.reqs) == 1 })
		syncErr := make(chan error, 1)
		go func() { syncErr <- l.Sync(ctx) }()
		rgWaitFor(t, "sync queued", func() bool { return len(l.reqs) == 2 })
		closeDone := make(chan error, 1)
		go func() { closeDone <- l.Close() }()
		rgWaitFor(t, "close begun", func() bool {
			select {
			case <-l.stop:
				return true
			default:
				return false
			}
		})
		release()
		select {
		case err := <-syncErr:
			if err != nil && !errors.Is(err, ferry.ErrClosed) {
				t.Fatalf("iteration %d: sync: %v", iter, err)
			}
		case <-time.After(time.Second):
			t.Fatalf("iteration %d: a Sync queued before Close never returned (held in the writer's carry and dropped)", iter)
		}
		select {
		case <-closeDone:
		case <-time.After(time.Second):
			t.Fatalf("iteration %d: Close hung", iter)
		}
		for range 2 {
			if err := <-errs; err != nil && !errors.Is(err, ferry.ErrClosed) {
				t.Fatalf("iteration %d: append: %v", iter, err)
			}
		}
	}
}

// TestRegress8bCallsRacingClose: 16 goroutines append (and some Sync or
// create topics) while Close runs. Every call must return, with success
// or ErrClosed, and Close must not hang: an enqueue that lands after the
// writer drained and exited would wait forever.
func TestRegress8bCallsRacingClose(t *testing.T) {
	ctx := context.Background()
	for iter := 0; iter < 200; iter++ {
		l := openTest(t, vfs.NewMemFS(), WithDurability(DurabilityNone), WithCleanInterval(24*time.Hour))
		mustCreate(t, l, "t", TopicConfig{})
		var wg sync.WaitGroup
		var acks atomic.Int64
		var bad atomic.Pointer[error]
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					var err error
					switch {
					case g == 15:
						err = l.Sync(ctx)
					case g == 14 && i%4 == 0:
						err = l.CreateTopic(ctx, fmt.Sprintf("x%d", i), TopicConfig{})
					default:
						err = l.Append(ctx, msg("t", "", "x"))
					}
					if err != nil {
						if !errors.Is(err, ferry.ErrClosed) {
							bad.CompareAndSwap(nil, &err)
						}
						return
					}
					acks.Add(1)
				}
			}()
		}
		rgWaitFor(t, "appends under way", func() bool { return acks.Load() >= 16 })
		if !rgWithin(500*time.Millisecond, func() { l.Close() }) {
			t.Fatalf("iteration %d: Close hung", iter)
		}
		if !rgWithin(500*time.Millisecond, wg.Wait) {
			t.Fatalf("iteration %d: a call racing Close never returned (its request was queued after the writer exited)", iter)
		}
		if p := bad.Load(); p != nil {
			t.Fatalf("iteration %d: call racing Close failed with %v, want success or ErrClosed", iter, *p)
		}
	}
}

// TestRegress9ReadOnlyOpenRacingOwner: read-only opens of a directory
// whose owner keeps appending, rolling and cleaning must never fail
// because the owner is working (appends into the zeroed-ahead tail,
// segments deleted or checkpoints replaced between two listings).
func TestRegress9ReadOnlyOpenRacingOwner(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	mem := vfs.NewMemFS()
	l := openTest(t, mem, cleanerOpts(clock)...)
	mustCreate(t, l, "r", TopicConfig{RetentionAge: time.Hour})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // appends: zero-ahead tails, rolls, roll checkpoints
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := l.Append(ctx, msg("r", "", fmt.Sprintf("%d|%0300d", i, 0))); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() { // retention: segment deletions, cleaner checkpoints
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			clock.Advance(20 * time.Minute)
			if _, err := l.Clean(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var firstErr error
	opens := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); opens++ {
		ro, err := Open(ctx, testDir, append([]Opt{WithFS(mem), WithReadOnly(), WithClock(clock.Now)}, smallSegments...)...)
		if err != nil {
			firstErr = err
			break
		}
		ro.Close()
	}
	close(stop)
	wg.Wait()
	l.Close()
	if firstErr != nil {
		t.Fatalf("read-only open %d failed while the owner was working: %v", opens+1, firstErr)
	}
}

// TestRegress10IntervalOutOfOrderWriteBack: with DurabilityInterval two
// acknowledged batches after the last fsync may reach the disk out of
// order: the crash keeps the second and zeros the first. Open (with
// DurabilityInterval) must cut the bad batch beyond the last fsync as a
// tail, report it in Recovery and succeed, not refuse it as corruption in
// the middle of the log.
func TestRegress10IntervalOutOfOrderWriteBack(t *testing.T) {
	ctx := context.Background()
	opts := []Opt{WithDurability(DurabilityInterval), WithSyncInterval(time.Minute), WithCleanInterval(24 * time.Hour)}
	mem := vfs.NewMemFS()
	l := openTest(t, mem, opts...)
	mustCreate(t, l, "t", TopicConfig{})
	m0 := msg("t", "", "synced")
	if err := l.Append(ctx, m0); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"unsynced 1", "unsynced 2"} {
		if err := l.Append(ctx, msg("t", "", p)); err != nil {
			t.Fatal(err)
		}
	}
	seg := lastSegment(t, mem)
	starts, end, _ := scanBatches(t, mem, seg)
	b1, b2 := starts[len(starts)-2], starts[len(starts)-1]
	f, _ := mem.Open(seg)
	written := make([]byte, end-b1)
	f.ReadAt(written, b1)
	f.Close()
	// The crash image: the synced prefix, then the first batch zeroed and
	// the second one intact.
	img := mem.CrashClone(nil)
	l.Close()
	g, err := img.OpenRW(seg)
	if err != nil {
		t.Fatal(err)
	}
	if size, _ := g.Size(); size != b1 {
		t.Fatalf("setup: synced size %d, want %d", size, b1)
	}
	g.Seek(0, io.SeekEnd)
	g.Write(make([]byte, b2-b1))
	g.Write(written[b2-b1:])
	g.Sync()
	g.Close()
	l2, err := Open(ctx, testDir, append([]Opt{WithFS(img)}, opts...)...)
	if err != nil {
		t.Fatalf("open after an out-of-order write-back: %v", err)
	}
	defer l2.Close()
	r := l2.Recovery()
	if r.TornBytes+r.ZeroTailBytes == 0 && len(r.Repaired) == 0 {
		t.Errorf("the bad batch beyond the last fsync was not reported: %+v", r)
	}
	if got := rgIDs(t, l2, "t", 0); got[m0.ID] == nil {
		t.Errorf("the synced message is gone")
	}
}

// TestRegress11TornBatchHoldingABatch: a torn final batch whose payload
// carries the bytes of a valid ferry batch (here a whole segment) is still
// a torn tail: Open must cut it, not take the embedded batch for data
// after the bad one and refuse.
func TestRegress11TornBatchHoldingABatch(t *testing.T) {
	ctx := context.Background()
	src := vfs.NewMemFS()
	ls := openTest(t, src)
	mustCreate(t, ls, "t", TopicConfig{})
	if err := ls.Append(ctx, msg("t", "", "inner")); err != nil {
		t.Fatal(err)
	}
	srcSeg := lastSegment(t, src)
	_, srcEnd, _ := scanBatches(t, src, srcSeg)
	segBytes := make([]byte, srcEnd)
	f, _ := src.Open(srcSeg)
	f.ReadAt(segBytes, 0)
	f.Close()
	ls.Close()
	if nextValidBatch(segBytes) < 0 {
		t.Fatal("setup: no valid batch in the payload")
	}

	mem := vfs.NewMemFS()
	l := openTest(t, mem)
	mustCreate(t, l, "t", TopicConfig{})
	m0 := msg("t", "", "before")
	if err := l.Append(ctx, m0); err != nil {
		t.Fatal(err)
	}
	carrier := &ferry.Message{Topic: "t", Payload: segBytes}
	if err := l.Append(ctx, carrier); err != nil {
		t.Fatal(err)
	}
	img := mem.CrashClone(nil)
	l.Close()
	seg := lastSegment(t, img)
	starts, end, _ := scanBatches(t, img, seg)
	lastStart := starts[len(starts)-1]
	g, _ := img.OpenRW(seg)
	g.Truncate(end - 1) // torn: the final batch lacks its last byte
	g.Sync()
	g.Close()
	l2, err := Open(ctx, testDir, WithFS(img))
	if err != nil {
		t.Fatalf("open with a torn final batch holding a valid batch: %v", err)
	}
	defer l2.Close()
	r := l2.Recovery()
	if r.TornBytes == 0 || r.TornBytes+r.ZeroTailBytes != end-1-lastStart {
		t.Errorf("recovery %+v, want the %d bytes of the torn batch cut", r, end-1-lastStart)
	}
	got := rgIDs(t, l2, "t", 0)
	if got[m0.ID] == nil || got[carrier.ID] != nil {
		t.Errorf("after cutting the torn batch: %d messages, want only the one before it", len(got))
	}
}

// TestRegress12ClockStepPinsRetention: one batch appended while the clock
// was a year ahead must not keep every later batch from expiring: each
// entry expires (and each tombstone is dropped) by its own append time.
func TestRegress12ClockStepPinsRetention(t *testing.T) {
	const year = 365 * 24 * time.Hour
	ctx := context.Background()
	t.Run("retention", func(t *testing.T) {
		clock := newTestClock()
		l := openTest(t, vfs.NewMemFS(), cleanerOpts(clock)...)
		defer l.Close()
		mustCreate(t, l, "r", TopicConfig{RetentionAge: time.Hour})
		mustCreate(t, l, "other", TopicConfig{})
		clock.Advance(year)
		if err := l.Append(ctx, msg("r", "", "from the future")); err != nil {
			t.Fatal(err)
		}
		clock.Advance(-year)
		if err := l.Append(ctx, msg("other", "", "separates the entries")); err != nil {
			t.Fatal(err)
		}
		fill(t, l, "r", 450, func(i int) string { return fmt.Sprint(i) })
		clock.Advance(3 * time.Hour)
		if _, err := l.Clean(ctx); err != nil {
			t.Fatal(err)
		}
		old := 0
		for _, m := range readAll(t, l, "r", 0) {
			if !bytes.Equal(m.Payload, []byte("from the future")) {
				old++
			}
		}
		if old != 0 {
			t.Errorf("%d of 450 messages appended 3 h ago survive a 1 h retention (pinned by one batch appended with the clock a year ahead)", old)
		}
	})
	t.Run("tombstones", func(t *testing.T) {
		clock := newTestClock()
		l := openTest(t, vfs.NewMemFS(), cleanerOpts(clock)...)
		defer l.Close()
		mustCreate(t, l, "c", TopicConfig{Compact: true, TombstoneRetention: time.Hour})
		mustCreate(t, l, "other", TopicConfig{})
		clock.Advance(year)
		if err := l.Append(ctx, msg("c", "a", "from the future")); err != nil {
			t.Fatal(err)
		}
		clock.Advance(-year)
		if err := l.Append(ctx, msg("other", "", "separates the entries")); err != nil {
			t.Fatal(err)
		}
		if err := l.Append(ctx, &ferry.Message{Topic: "c", Key: []byte("b")}); err != nil { // tombstone
			t.Fatal(err)
		}
		fill(t, l, "other", 200, func(i int) string { return fmt.Sprint(i) }) // roll: seal them
		clock.Advance(3 * time.Hour)
		st, err := l.Clean(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range readAll(t, l, "c", 0) {
			if m.IsTombstone() {
				t.Fatalf("tombstone appended 3 h ago survives a 1 h tombstone retention (cleaner %+v)", st)
			}
		}
	})
}

// TestRegress13OffsetForTimeAfterCompaction: after compaction relocates an
// early entry, OffsetForTime must still answer exactly (the relocated
// entry must not take the partition's running max time).
func TestRegress13OffsetForTimeAfterCompaction(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	l := openTest(t, vfs.NewMemFS(), cleanerOpts(clock)...)
	defer l.Close()
	mustCreate(t, l, "c", TopicConfig{Compact: true})
	mustCreate(t, l, "other", TopicConfig{})
	base := time.Unix(1_600_000_000, 0)
	appendRange := func(from, to int) {
		for i := from; i < to; i += 10 {
			var b []*ferry.Message
			for j := i; j < i+10 && j < to; j++ {
				k := fmt.Sprint("u", j)
				if j < 10 {
					k = fmt.Sprint("dup", j)
				} else if j >= 140 && j < 150 {
					k = fmt.Sprint("dup", j-140)
				}
				m := msg("c", k, fmt.Sprint(j))
				m.Time = base.Add(time.Duration(j) * time.Second)
				b = append(b, m)
			}
			if err := l.Append(ctx, b...); err != nil {
				t.Fatal(err)
			}
		}
	}
	appendRange(0, 140)
	fill(t, l, "other", 200, func(i int) string { return fmt.Sprint(i) }) // roll
	appendRange(140, 200)
	clock.Advance(3 * time.Minute) // past the dedup window, inside which the cleaner keeps everything
	if st, err := l.Clean(ctx); err != nil || st.RecordsCompacted != 10 {
		t.Fatalf("setup: clean %+v %v", st, err)
	}
	for k := 0; k < 200; k++ {
		want := uint64(max(k, 10)) // offsets 0-9 were compacted away
		got, err := l.OffsetForTime("c", 0, base.Add(time.Duration(k)*time.Second))
		if err != nil || got != want {
			t.Fatalf("OffsetForTime(base+%ds) = %d, %v after compaction; want %d", k, got, err, want)
		}
	}
}

// TestRegressD1KeylessInCompactedTopic: a compacted topic keeps the latest
// record per key, so a keyless message there must be refused with
// ErrInvalidArgument and an error that says why, and nothing written.
func TestRegressD1KeylessInCompactedTopic(t *testing.T) {
	l := openTest(t, vfs.NewMemFS())
	defer l.Close()
	mustCreate(t, l, "c", TopicConfig{Compact: true})
	err := l.Append(context.Background(), msg("c", "", "no key"))
	if !errors.Is(err, ferry.ErrInvalidArgument) || !strings.Contains(strings.ToLower(err.Error()), "key") {
		t.Fatalf("keyless message to a compacted topic: %v, want ErrInvalidArgument mentioning the key", err)
	}
	if _, end, _ := l.Bounds("c", 0); end != 0 {
		t.Fatalf("refused message written: end %d", end)
	}
}

// TestRegressD2DataDirEntrySynced: creating the data directory must fsync
// its entry in the parent directory, or a power loss can lose the whole
// directory after appends were acknowledged.
func TestRegressD2DataDirEntrySynced(t *testing.T) {
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	var mu sync.Mutex
	var synced []string
	ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
		if op == vfs.OpSyncDir {
			mu.Lock()
			synced = append(synced, filepath.Clean(path))
			mu.Unlock()
		}
		return nil
	})
	l := openTest(t, ffs)
	l.Close()
	mu.Lock()
	defer mu.Unlock()
	parent := filepath.Dir(testDir)
	for _, p := range synced {
		if p == parent {
			return
		}
	}
	t.Fatalf("creating %s synced directories %v, never its parent %s", testDir, synced, parent)
}

// doneAtSecondLook is a context that is done from the second call of Done
// on: AppendAsync's wait for queue bytes looks once and passes, its wait
// for room in the queue then sees it done.
type doneAtSecondLook struct {
	context.Context
	looks atomic.Int32
	ch    chan struct{}
	once  sync.Once
}

func (c *doneAtSecondLook) Done() <-chan struct{} {
	if c.looks.Add(1) >= 2 {
		c.once.Do(func() { close(c.ch) })
	}
	return c.ch
}

func (c *doneAtSecondLook) Err() error {
	select {
	case <-c.ch:
		return context.Canceled
	default:
		return nil
	}
}

// TestRegressAsyncPromiseOnce: an AppendAsync whose wait for room in the
// queue ends (its context done) gets its promise called once, with the
// error. It used to be called twice: first with no error, as if the batch
// were durable, then with the error.
func TestRegressAsyncPromiseOnce(t *testing.T) {
	ctx := context.Background()
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	l := openTest(t, ffs, WithQueueDepth(1), WithCleanInterval(24*time.Hour), withMaxInflight(1)) // the writer waits in each fsync
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	entered, release := rgBlockNextSync(ffs)
	defer release()
	first := make(chan error, 2)
	go func() { first <- l.Append(ctx, msg("t", "", "a")) }()
	<-entered // the writer holds "a" in its fsync
	go func() { first <- l.Append(ctx, msg("t", "", "b")) }()
	rgWaitFor(t, "the queue full", func() bool { return len(l.reqs) == 1 })
	var calls []error
	l.AppendAsync(&doneAtSecondLook{Context: ctx, ch: make(chan struct{})}, func(_ *Batch, err error) { calls = append(calls, err) }, msg("t", "", "c"))
	release()
	for range 2 {
		if err := <-first; err != nil {
			t.Fatal(err)
		}
	}
	if len(calls) != 1 || !errors.Is(calls[0], context.Canceled) {
		t.Fatalf("promise called %d times with %v, want once with context.Canceled", len(calls), calls)
	}
}
