package commitlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// countingFS counts the bytes written to checkpoint files.
type countingFS struct {
	vfs.FS
	ckBytes atomic.Int64
}

type countingFile struct {
	vfs.File
	n *atomic.Int64
}

func (f countingFile) Write(p []byte) (int, error) {
	f.n.Add(int64(len(p)))
	return f.File.Write(p)
}

func (c *countingFS) Create(name string) (vfs.File, error) {
	f, err := c.FS.Create(name)
	if err != nil || !strings.Contains(name, "/"+checkpointDir+"/") {
		return f, err
	}
	return countingFile{f, &c.ckBytes}, nil
}

// indexOf returns every partition's bounds and entries, for comparing the
// index of a running log with the one recovery built.
func indexOf(l *Log) map[string][]partitionIndex {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := map[string][]partitionIndex{}
	for name, t := range l.topics {
		for _, p := range t.parts {
			p.mu.RLock()
			out[name] = append(out[name], partitionIndex{p.start, p.end, append([]indexEntry(nil), p.entries...)})
			p.mu.RUnlock()
		}
	}
	return out
}

type partitionIndex struct {
	start, end uint64
	entries    []indexEntry
}

// TestRegress15CheckpointCostBoundedByChange: with 8 partitions written in
// shared 8-message batches, the index has an entry per partition per
// batch. A checkpoint at each roll used to hold the whole index, so a log
// with N rolls wrote about N/2 times its final checkpoint. Deltas hold
// what changed since the previous checkpoint, and the compactor folds
// them into a base once they outweigh it: the total stays a small
// multiple of the final state. Recovery from the chain gives the running
// log's index.
func TestRegress15CheckpointCostBoundedByChange(t *testing.T) {
	ctx := context.Background()
	fs := &countingFS{FS: vfs.NewMemFS()}
	l := openTest(t, fs, smallSegments...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 8})
	for i := 0; i < 3000; i++ {
		var batch []*ferry.Message
		for p := 0; p < 8; p++ {
			m := msg("t", "", fmt.Sprintf("m%d-%d-%0200d", i, p, 0))
			m.Partition, m.PinPartition = int32(p), true
			batch = append(batch, m)
		}
		if err := l.Append(ctx, batch...); err != nil {
			t.Fatal(err)
		}
	}
	rolls := len(l.segs)
	full := len(encodeCheckpoint(l.snapshot(l.active.id, uint64(l.activeSize), false)))
	want := indexOf(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	written := fs.ckBytes.Load()
	t.Logf("%d segments, final state %d bytes, %d bytes of checkpoints written", rolls, full, written)
	if rolls < 20 {
		t.Fatalf("setup: only %d segments", rolls)
	}
	if written > 4*int64(full) {
		t.Errorf("%d rolls wrote %d bytes of checkpoints, %.1f times the final state of %d bytes: want at most 4 times", rolls, written, float64(written)/float64(full), full)
	}
	l2 := openTest(t, fs, smallSegments...)
	defer l2.Close()
	if r := l2.Recovery(); r.Checkpoint == "" || r.BytesScanned != 0 {
		t.Errorf("reopen after Close: checkpoint %q, %d bytes replayed; want a checkpoint and nothing to replay", r.Checkpoint, r.BytesScanned)
	}
	if got := indexOf(l2); !reflect.DeepEqual(got, want) {
		t.Errorf("the index after recovery from the checkpoint chain differs from the running log's")
	}
}

// TestCheckpointCompactionCrash crashes at every filesystem operation of
// a compaction of the checkpoint chain (strict and random power-loss
// clones): whatever survives, recovery must build the same index and
// offsets.
func TestCheckpointCompactionCrash(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewMemFS()
	clock := newTestClock()
	opts := cleanerOpts(clock)
	l := openTest(t, mem, opts...)
	// Size retention makes the cleaner delete the first segments, so that
	// the chain holds state the log no longer has (the topic, offsets).
	mustCreate(t, l, "t", TopicConfig{Partitions: 4, RetentionBytes: 32 << 10})
	for i := 0; i < 600; i++ {
		var batch []*ferry.Message
		for p := 0; p < 4; p++ {
			m := msg("t", "", fmt.Sprintf("m%d-%d-%0200d", i, p, 0))
			m.Partition, m.PinPartition = int32(p), true
			batch = append(batch, m)
		}
		if err := l.Append(ctx, batch...); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			if err := l.CommitOffsets(ctx, "g", Offset{Topic: "t", Partition: int32(i % 4), Offset: uint64(i)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	clock.Advance(3 * time.Minute) // past the dedup window
	if st, err := l.Clean(ctx); err != nil || st.SegmentsDeleted == 0 {
		t.Fatalf("setup: clean %+v, %v", st, err)
	}
	for i := 0; i < 100; i++ { // deltas after the cleaner's checkpoint
		if err := l.Append(ctx, msg("t", "", fmt.Sprintf("late%d-%0200d", i, 0))); err != nil {
			t.Fatal(err)
		}
	}
	want := indexOf(l)
	wantGroups := l.Groups()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	deltas := 0
	for _, f := range (&Log{cfg: cfg{fs: mem}, dir: testDir}).listCheckpoints() {
		if f.delta {
			deltas++
		}
	}
	if deltas == 0 {
		t.Fatal("setup: no deltas to compact")
	}
	for at := int64(1); ; at++ {
		for _, strict := range []bool{true, false} {
			ffs := vfs.NewFaultFS(mem.CrashClone(nil))
			l := openTest(t, ffs, opts...)
			var rng *rand.Rand
			if !strict {
				rng = rand.New(rand.NewPCG(uint64(at), 1))
			}
			ffs.CrashAt(ffs.MutatingOps()+at, rng)
			err := l.compactCheckpoints()
			img := ffs.Crashed()
			l.Close()
			if img == nil {
				if err != nil {
					t.Fatalf("compaction without a crash failed: %v", err)
				}
				if !strict {
					continue
				}
				if at == 1 {
					t.Fatal("compaction wrote nothing")
				}
				t.Logf("%d crash points over a compaction of %d deltas", at-1, deltas)
				return
			}
			l2, err := Open(ctx, testDir, append([]Opt{WithFS(img)}, opts...)...)
			if err != nil {
				t.Fatalf("crash at op %d of a compaction (strict %v): open: %v", at, strict, err)
			}
			if got := indexOf(l2); !reflect.DeepEqual(got, want) {
				t.Fatalf("crash at op %d of a compaction (strict %v): index differs", at, strict)
			}
			if got := l2.Groups(); !reflect.DeepEqual(got, wantGroups) {
				t.Fatalf("crash at op %d of a compaction (strict %v): offsets %v, want %v", at, strict, got, wantGroups)
			}
			l2.Close()
		}
	}
}
