package commitlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"reflect"
	"time"

	"github.com/ferrymq/ferry"
	"testing"

	"github.com/ferrymq/ferry/vfs"
)

// r2Count returns how many messages partition 0 of topic holds.
func r2Count(t *testing.T, l *Log, topic string) int {
	t.Helper()
	return len(readAll(t, l, topic, 0))
}

// r2Image writes n acknowledged single-message batches to topic "t" and
// returns the strict crash image (no Close: no checkpoint at the end),
// the last segment and where its batches start.
func r2Image(t *testing.T, n int, opts ...Opt) (*vfs.MemFS, string, []int64) {
	t.Helper()
	fs := vfs.NewMemFS()
	l := openTest(t, fs, opts...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 1})
	for i := 0; i < n; i++ {
		if err := l.Append(context.Background(), msg("t", "k", fmt.Sprintf("payload-%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	img := fs.CrashClone(nil)
	l.Close()
	seg := lastSegment(t, img)
	starts, _ := batchStarts(t, img, seg)
	return img, seg, starts
}

// TestReview2FlipPlusTornHeader: a bit flip in the magic of an
// acknowledged batch followed by acknowledged batches, then a crash that
// tore the next write within its 24-byte header (a prefix of a write is
// what a crash leaves, see MemFS.CrashClone). The later acknowledged
// batches prove the damaged one was complete: Open must refuse. It cuts
// them all silently instead, because laterWrite accepts a chain ending in
// a torn write only if the torn write's header is whole.
func TestReview2FlipPlusTornHeader(t *testing.T) {
	for _, tornLen := range []int{1, 4, 10, 23} {
		for _, zeroAhead := range []bool{false, true} {
			t.Run(fmt.Sprintf("torn%d_zeroAhead%v", tornLen, zeroAhead), func(t *testing.T) {
				img, seg, starts := r2Image(t, 6, WithZeroAhead(zeroAhead))
				end, size := segmentEnd(t, img, seg)
				// The torn write: the first bytes of a batch like the last.
				f, err := img.OpenRW(seg)
				if err != nil {
					t.Fatal(err)
				}
				last := make([]byte, end-starts[len(starts)-1])
				f.ReadAt(last, starts[len(starts)-1])
				if zeroAhead {
					if size == end {
						t.Fatalf("zero-ahead left no zeros (size %d)", size)
					}
					f.Seek(end, 0)
				} else {
					f.Seek(0, 2)
				}
				f.Write(last[:tornLen])
				f.Close()
				bad := starts[len(starts)-3] // two acknowledged batches follow it
				if err := img.FlipBit(seg, bad, 0); err != nil {
					t.Fatal(err)
				}
				l, err := Open(context.Background(), testDir, WithFS(img), WithZeroAhead(zeroAhead))
				if err == nil {
					n := r2Count(t, l, "t")
					l.Close()
					t.Fatalf("Open succeeded with %d of 6 acknowledged messages (recovery %+v); want a CorruptionError at %d", n, l.Recovery(), bad)
				}
				var ce *CorruptionError
				if !errors.As(err, &ce) || ce.Offset != bad {
					t.Fatalf("want CorruptionError at %d, got %v", bad, err)
				}
			})
		}
	}
}

// r2NestedChain returns n bytes holding batch headers every 24 bytes, each
// a valid batch (magic, length, CRC, version, one section) ending at the
// same place, n-trailer; trailer bytes of 0xff follow. Every position is a
// candidate whose CRC matches, so a search that re-checksums each one (or
// walks a chain from each) costs the sum of their lengths: quadratic.
func r2NestedChain(n, trailer int) []byte {
	b := make([]byte, n)
	end := n - trailer
	for i := end; i < n; i++ {
		b[i] = 0xff
	}
	last := (end - batchHeaderSize) / batchHeaderSize * batchHeaderSize
	for s := last; s >= 0; s -= batchHeaderSize {
		binary.LittleEndian.PutUint32(b[s:], batchMagic)
		binary.LittleEndian.PutUint32(b[s+4:], uint32(end-s))
		b[s+12], b[s+14] = batchVersion, 1
		binary.LittleEndian.PutUint64(b[s+16:], uint64(s))
		binary.LittleEndian.PutUint32(b[s+8:], crc32.Checksum(b[s+12:end], castagnoli))
	}
	return b
}

// TestReview2TornBatchNestedChainQuadratic: a torn last write of 4 MiB
// (its first sector never reached disk, as a power loss that wrote back
// later pages first leaves; its last bytes are missing) whose payloads
// are nested valid batches. nextValidBatch finds its candidates' CRCs in
// one pass, but then decodeBatchHeader recomputes each matching
// candidate's CRC and laterWrite walks (and checksums) its chain again:
// O(n^2 / 24). The reopen must succeed; its time is measured by
// BenchmarkReopenTornBatch (payload=nested), not asserted here.
func TestReview2TornBatchNestedChainQuadratic(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	opts := []Opt{WithMaxBatchBytes(17 << 20), WithMaxQueueBytes(64 << 20)}
	l := openTest(t, fs, opts...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 1})
	if err := l.Append(ctx, msg("t", "k", "before")); err != nil {
		t.Fatal(err)
	}
	var msgs []*ferry.Message
	for i := 0; i < 2; i++ {
		msgs = append(msgs, &ferry.Message{Topic: "t", Payload: r2NestedChain(1<<20-256, 200)})
	}
	if err := l.Append(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	l.Close()
	seg := lastSegment(t, fs)
	starts, size := batchStarts(t, fs, seg)
	torn := starts[len(starts)-1]
	f, _ := fs.OpenRW(seg)
	f.Truncate(size - 100)
	f.Seek(torn, 0)
	f.Write(make([]byte, 512)) // the first sector of the torn write: never written back
	f.Sync()
	f.Close()
	removeCheckpoints(t, fs)
	done := make(chan error, 1)
	t0 := time.Now()
	go func() {
		l, err := Open(ctx, testDir, append(opts, WithFS(fs))...)
		if err == nil {
			l.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reopen after a torn write refused: %v", err)
		}
		t.Logf("reopen took %v (BenchmarkReopenTornBatch measures it)", time.Since(t0))
	case <-time.After(10 * time.Second):
		t.Fatalf("reopen after a torn 2 MiB batch still running after 10 s (quadratic search)")
	}
}

// TestReview2TornWriteWithoutHeaderNeedsRepair: the last, unacknowledged
// write carries ferry batches of this log at the end of its payload (a
// copy of a segment sent as a message), and a power loss wrote back its
// later bytes but not its first sector (the disk wrote its sectors out of
// order). With the header gone, the bytes on disk are those that a
// damaged acknowledged batch followed by later writes leaves
// (TestReview2FlipPlusTornHeader): recovery cannot tell them apart without
// a record of the last synced position. It refuses rather than risk
// cutting acknowledged batches, naming the file and offset; opening with
// WithRepair cuts there and keeps every acknowledged message.
func TestReview2TornWriteWithoutHeaderNeedsRepair(t *testing.T) {
	for _, zeroAhead := range []bool{true, false} {
		t.Run(fmt.Sprintf("zeroAhead%v", zeroAhead), func(t *testing.T) {
			ctx := context.Background()
			fs := vfs.NewMemFS()
			l := openTest(t, fs, WithZeroAhead(zeroAhead))
			mustCreate(t, l, "t", TopicConfig{Partitions: 1})
			for i := 0; i < 3; i++ {
				if err := l.Append(ctx, msg("t", "k", fmt.Sprintf("acked-%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			seg := lastSegment(t, fs)
			starts, end, _ := scanBatches(t, fs, seg)
			f, _ := fs.Open(seg)
			embedded := make([]byte, end-starts[1])
			f.ReadAt(embedded, starts[1]) // two valid batches of this log
			f.Close()
			img := fs.CrashClone(nil) // the acknowledged state
			// The last write, as the live log makes it.
			if err := l.Append(ctx, msg("t", "k", "copy:"+string(embedded))); err != nil {
				t.Fatal(err)
			}
			lf, _ := fs.Open(seg)
			last := make([]byte, 4096)
			n, _ := lf.ReadAt(last, end)
			lf.Close()
			l.Close()
			_, lend, _ := scanBatches(t, fs, seg)
			last = last[:min(int64(n), lend-end)]
			// What reached disk of it: all but its first 64 bytes (and,
			// without zero-ahead, all but its last byte).
			torn := append(make([]byte, 64), last[64:]...)
			if !zeroAhead {
				torn = torn[:len(torn)-1]
			}
			wf, _ := img.OpenRW(seg)
			wf.Seek(end, 0)
			wf.Write(torn)
			wf.Sync()
			wf.Close()
			_, err := Open(ctx, testDir, WithFS(img.CrashClone(nil)), WithZeroAhead(zeroAhead))
			var ce *CorruptionError
			if !errors.As(err, &ce) || ce.Offset != end || ce.File != seg {
				t.Fatalf("open: %v; want a CorruptionError at %s:%d", err, seg, end)
			}
			l2, err := Open(ctx, testDir, WithFS(img), WithZeroAhead(zeroAhead), WithRepair())
			if err != nil {
				t.Fatalf("open with repair: %v", err)
			}
			if n := r2Count(t, l2, "t"); n != 3 {
				t.Fatalf("repair kept %d messages, want the 3 acknowledged", n)
			}
			l2.Close()
		})
	}
}

// r2State is what the checkpoint chain must reproduce: every partition's
// index and bounds, and the consumer offsets.
type r2State struct {
	index  map[string][]partitionIndex
	groups map[string]map[groupKey]uint64
	next   uint32
}

func r2StateOf(l *Log) r2State {
	s := r2State{index: indexOf(l), groups: map[string]map[groupKey]uint64{}}
	l.mu.RLock()
	defer l.mu.RUnlock()
	s.next = l.nextTopicID
	for g, offs := range l.groups {
		if len(offs) == 0 {
			continue
		}
		s.groups[g] = map[groupKey]uint64{}
		for k, v := range offs {
			s.groups[g][k] = v
		}
	}
	return s
}

// TestReview2CheckpointChainRandom runs random appends, offset commits,
// topic deletes and re-creates, cleans (retention, compaction, segment
// deletion), Close/reopen and strict crashes, and checks after every
// reopen that the state recovered from the chain is the running log's.
func TestReview2CheckpointChainRandom(t *testing.T) {
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { r2ChainRun(t, seed) })
	}
}

func r2ChainRun(t *testing.T, seed uint64) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 99))
	clock := newTestClock()
	opts := append(cleanerOpts(clock), WithMaxOpenSegments(3))
	fs := vfs.NewMemFS()
	l := openTest(t, fs, opts...)
	configs := []TopicConfig{
		{Partitions: 3, RetentionBytes: 96 << 10},
		{Partitions: 2, Compact: true},
		{Partitions: 2, RetentionAge: 10 * time.Minute},
	}
	names := []string{"a", "b", "c"}
	live := map[string]bool{}
	for i, n := range names {
		mustCreate(t, l, n, configs[i])
		live[n] = true
	}
	for step := 0; step < 1500; step++ {
		clock.Advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
		switch r := rng.IntN(100); {
		case r < 70:
			n := names[rng.IntN(len(names))]
			if !live[n] {
				continue
			}
			var batch []*ferry.Message
			for k := rng.IntN(4); k >= 0; k-- {
				m := msg(n, fmt.Sprintf("k%d", rng.IntN(8)), fmt.Sprintf("%d-%0*d", step, rng.IntN(1500), 0))
				m.Partition, m.PinPartition = int32(rng.IntN(2)), true
				batch = append(batch, m)
			}
			if err := l.Append(ctx, batch...); err != nil {
				t.Fatalf("step %d: append: %v", step, err)
			}
		case r < 80:
			n := names[rng.IntN(len(names))]
			if !live[n] {
				continue
			}
			if err := l.CommitOffsets(ctx, fmt.Sprintf("g%d", rng.IntN(2)), Offset{Topic: n, Partition: int32(rng.IntN(2)), Offset: uint64(rng.IntN(50))}); err != nil {
				t.Fatalf("step %d: commit: %v", step, err)
			}
		case r < 83:
			n := names[rng.IntN(len(names))]
			if live[n] {
				if err := l.DeleteTopic(ctx, n); err != nil {
					t.Fatalf("step %d: delete: %v", step, err)
				}
			} else {
				mustCreate(t, l, n, configs[rng.IntN(len(configs))])
			}
			live[n] = !live[n]
		case r < 90:
			if rng.IntN(3) == 0 {
				clock.Advance(15 * time.Minute)
			}
			st, err := l.Clean(ctx)
			r2Deleted += st.SegmentsDeleted
			if err != nil {
				t.Fatalf("step %d: clean: %v", step, err)
			}
		case r < 95:
			want := r2StateOf(l)
			if err := l.Close(); err != nil {
				t.Fatalf("step %d: close: %v", step, err)
			}
			l = openTest(t, fs, opts...)
			if got := r2StateOf(l); !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d: after Close and reopen (checkpoint %q) the state differs:\n got %+v\nwant %+v", step, l.Recovery().Checkpoint, got, want)
			}
		default:
			want := r2StateOf(l)
			var cr *rand.Rand
			if rng.IntN(2) == 0 {
				cr = rand.New(rand.NewPCG(seed, uint64(step)))
			}
			img := fs.CrashClone(cr)
			l.Close()
			fs = img
			l = openTest(t, fs, opts...)
			if got := r2StateOf(l); !reflect.DeepEqual(got, want) {
				t.Fatalf("step %d: after a crash (checkpoint %q) the state differs:\n got %+v\nwant %+v", step, l.Recovery().Checkpoint, got, want)
			}
		}
	}
	t.Logf("segments %d, checkpoint files %v, deleted %d", len(l.segs), l.listCheckpoints(), r2Deleted)
	l.Close()
}

var r2Deleted int
