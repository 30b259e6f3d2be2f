package commitlog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func newTestClock() *testClock { return &testClock{now: time.Unix(1_700_000_000, 0)} }
func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// cleanerOpts: small segments, and a background cleaner that never runs
// during the test (the tests call Clean themselves).
func cleanerOpts(clock *testClock) []Opt {
	return append([]Opt{WithClock(clock.Now), WithCleanInterval(24 * time.Hour)}, smallSegments...)
}

func fill(t *testing.T, l *Log, topic string, n int, key func(i int) string) {
	t.Helper()
	for i := 0; i < n; i += 10 {
		var batch []*ferry.Message
		for j := i; j < i+10 && j < n; j++ {
			batch = append(batch, &ferry.Message{Topic: topic, Key: []byte(key(j)), Payload: []byte(fmt.Sprintf("%s=%d|%0400d", key(j), j, 0))})
		}
		if err := l.Append(context.Background(), batch...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestRetentionByAgeDeletesSegments(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	fs := vfs.NewMemFS()
	l := openTest(t, fs, cleanerOpts(clock)...)
	mustCreate(t, l, "old", TopicConfig{RetentionAge: time.Hour})
	if err := l.CommitOffsets(ctx, "g", Offset{Topic: "old", Partition: 0, Offset: 0}); err != nil {
		t.Fatal(err)
	}
	fill(t, l, "old", 400, func(i int) string { return fmt.Sprint(i) })
	clock.Advance(2 * time.Hour)
	fill(t, l, "old", 400, func(i int) string { return fmt.Sprint(i) })
	segsBefore, _ := fs.List(testDir + "/wal")
	st, err := l.Clean(ctx)
	if err != nil {
		t.Fatal(err)
	}
	segsAfter, _ := fs.List(testDir + "/wal")
	if st.SegmentsDeleted == 0 || len(segsAfter) >= len(segsBefore) {
		t.Fatalf("no segment deleted: %+v, %d -> %d segments", st, len(segsBefore), len(segsAfter))
	}
	start, end, _ := l.Bounds("old", 0)
	if start == 0 || end != 800 {
		t.Fatalf("bounds after retention: [%d, %d)", start, end)
	}
	if _, err := l.Read("old", 0, 0, ReadOpts{}); !errors.Is(err, ferry.ErrOffsetOutOfRange) {
		t.Fatalf("read of an expired offset: %v", err)
	}
	kept := readAll(t, l, "old", 0)
	if kept[len(kept)-1].Offset != 799 || len(kept) < 400 {
		t.Fatalf("kept %d messages ending at %d", len(kept), kept[len(kept)-1].Offset)
	}
	l.Close()
	// The topic and the group offset were created in a deleted segment:
	// they survive through the checkpoint.
	l = openTest(t, fs, cleanerOpts(clock)...)
	defer l.Close()
	if s2, e2, err := l.Bounds("old", 0); err != nil || s2 != start || e2 != end {
		t.Fatalf("after reopen bounds [%d, %d) err %v, want [%d, %d)", s2, e2, err, start, end)
	}
	if _, ok := l.CommittedOffset("g", "old", 0); !ok {
		t.Fatalf("group offset lost with its segment")
	}
	if got := readAll(t, l, "old", 0); len(got) != len(kept) {
		t.Fatalf("after reopen %d messages, want %d", len(got), len(kept))
	}
}

func TestRetentionBySize(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	l := openTest(t, vfs.NewMemFS(), cleanerOpts(clock)...)
	defer l.Close()
	mustCreate(t, l, "s", TopicConfig{RetentionBytes: 50 << 10})
	fill(t, l, "s", 1000, func(i int) string { return fmt.Sprint(i) })
	clock.Advance(3 * time.Minute) // past the dedup window, inside which the cleaner keeps everything
	if _, err := l.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	info, _ := l.Topic("s")
	if b := info.Partitions[0].Bytes; b > 50<<10 || b == 0 {
		t.Fatalf("partition holds %d bytes after size retention of 50 KiB", b)
	}
	got := readAll(t, l, "s", 0)
	if got[len(got)-1].Offset != 999 {
		t.Fatalf("newest message lost: last offset %d", got[len(got)-1].Offset)
	}
}

// latestByKey reads a partition and returns the payload of each key's
// last record, checking that no key appears after a later record of itself.
func latestByKey(t *testing.T, l *Log, topic string) map[string]string {
	out := map[string]string{}
	for _, m := range readAll(t, l, topic, 0) {
		if m.IsTombstone() {
			delete(out, string(m.Key))
			continue
		}
		out[string(m.Key)] = string(m.Payload)
	}
	return out
}

func TestCompactionKeepsLatestPerKey(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	fs := vfs.NewMemFS()
	l := openTest(t, fs, cleanerOpts(clock)...)
	mustCreate(t, l, "c", TopicConfig{Compact: true, TombstoneRetention: time.Hour})
	fill(t, l, "c", 1500, func(i int) string { return fmt.Sprint("k", i%10) })
	if err := l.Append(ctx, &ferry.Message{Topic: "c", Key: []byte("k3")}); err != nil { // tombstone
		t.Fatal(err)
	}
	fill(t, l, "c", 300, func(i int) string { return fmt.Sprint("other", i%5) }) // seal the segments above
	want := latestByKey(t, l, "c")
	_, endBefore, _ := l.Bounds("c", 0)
	clock.Advance(3 * time.Minute) // past the dedup window, inside which the cleaner keeps everything
	st, err := l.Clean(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.RecordsCompacted == 0 || st.SegmentsDeleted == 0 {
		t.Fatalf("compaction did nothing: %+v", st)
	}
	check := func(l *Log) {
		t.Helper()
		got := latestByKey(t, l, "c")
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("latest values changed by compaction:\n got %v\nwant %v", got, want)
		}
		if _, end, _ := l.Bounds("c", 0); end != endBefore {
			t.Fatalf("end moved from %d to %d", endBefore, end)
		}
		prev := uint64(0)
		for i, m := range readAll(t, l, "c", 0) {
			if i > 0 && m.Offset <= prev {
				t.Fatalf("offsets out of order after compaction: %d after %d", m.Offset, prev)
			}
			prev = m.Offset
		}
	}
	check(l)
	if n := len(readAll(t, l, "c", 0)); n > 400 {
		t.Fatalf("%d records remain after compacting 10 keys", n)
	}
	l.Close()
	l = openTest(t, fs, cleanerOpts(clock)...)
	check(l)
	// Tombstones expire after their retention.
	clock.Advance(2 * time.Hour)
	fill(t, l, "c", 400, func(i int) string { return fmt.Sprint("more", i%3) })
	st, err = l.Clean(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TombstonesExpired != 1 {
		t.Fatalf("tombstones expired: %+v", st)
	}
	for _, m := range readAll(t, l, "c", 0) {
		if string(m.Key) == "k3" {
			t.Fatalf("deleted key k3 still present at %d after its tombstone expired", m.Offset)
		}
	}
	l.Close()
}

// TestCleanerCrashSweep crashes the log at every point of a cleaner run
// (relocation writes, checkpoint, segment removal, directory sync) and
// checks that recovery always shows the same latest value per key and
// loses no retained record.
func TestCleanerCrashSweep(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	base := vfs.NewMemFS()
	l := openTest(t, base, cleanerOpts(clock)...)
	mustCreate(t, l, "c", TopicConfig{Compact: true})
	mustCreate(t, l, "r", TopicConfig{RetentionAge: time.Hour})
	fill(t, l, "r", 300, func(i int) string { return fmt.Sprint(i) })
	fill(t, l, "c", 1200, func(i int) string { return fmt.Sprint("k", i%7) })
	clock.Advance(2 * time.Hour)
	fill(t, l, "r", 200, func(i int) string { return fmt.Sprint(i) })
	want := latestByKey(t, l, "c")
	l.Close()

	calib := vfs.NewFaultFS(base.CrashClone(nil))
	l = openTest(t, calib, cleanerOpts(clock)...)
	opsBefore := calib.MutatingOps()
	if _, err := l.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	total := calib.MutatingOps() - opsBefore
	l.Close()
	if total < 5 {
		t.Fatalf("cleaner did only %d operations", total)
	}
	for k := int64(1); k <= total; k++ {
		for _, strict := range []bool{true, false} {
			ffs := vfs.NewFaultFS(base.CrashClone(nil))
			l := openTest(t, ffs, cleanerOpts(clock)...)
			var rng *rand.Rand
			if !strict {
				rng = rand.New(rand.NewPCG(uint64(k), 3))
			}
			ffs.CrashAt(ffs.MutatingOps()+k, rng)
			l.Clean(ctx)
			l.Close()
			crashed := ffs.Crashed()
			if crashed == nil {
				crashed = ffs.Crash(rng)
			}
			l2, err := Open(ctx, testDir, append([]Opt{WithFS(crashed)}, cleanerOpts(clock)...)...)
			if err != nil {
				t.Fatalf("crash at cleaner op %d/%d: reopen: %v", k, total, err)
			}
			if got := latestByKey(t, l2, "c"); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("crash at cleaner op %d: latest values %v, want %v", k, got, want)
			}
			if _, end, _ := l2.Bounds("r", 0); end != 500 {
				t.Fatalf("crash at cleaner op %d: retention topic end %d", k, end)
			}
			last := readAll(t, l2, "r", 0)
			if len(last) < 200 || last[len(last)-1].Offset != 499 {
				t.Fatalf("crash at cleaner op %d: retained records lost (%d left)", k, len(last))
			}
			// And the cleaner can finish the job after the crash.
			if _, err := l2.Clean(ctx); err != nil {
				t.Fatalf("clean after crash at op %d: %v", k, err)
			}
			if got := latestByKey(t, l2, "c"); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after re-clean: %v", got)
			}
			l2.Close()
		}
	}
	t.Logf("crashed at each of %d cleaner operations, strict and random clones", total)
}

// Retention counts a message's age from its append: messages that carry an
// old time of their own (created hours before, relayed now) stay the whole
// retention period.
func TestRetentionAgesByAppendTime(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	l := openTest(t, vfs.NewMemFS(), cleanerOpts(clock)...)
	defer l.Close()
	mustCreate(t, l, "r", TopicConfig{RetentionAge: time.Hour})
	for i := range 50 {
		m := &ferry.Message{Topic: "r", Payload: []byte(fmt.Sprintf("%d|%0400d", i, 0)), Time: clock.Now().Add(-3 * time.Hour)}
		if err := l.Append(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(30 * time.Minute)
	if _, err := l.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(readAll(t, l, "r", 0)); got != 50 {
		t.Fatalf("after 30 minutes of a 1 h retention %d of 50 messages remain", got)
	}
	clock.Advance(time.Hour)
	if _, err := l.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(readAll(t, l, "r", 0)); got != 0 {
		t.Fatalf("past the retention %d messages remain", got)
	}
}
