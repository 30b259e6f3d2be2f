package commitlog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// smallSegments makes the crash tests roll segments and write checkpoints
// often, so crashes land in those paths too.
var smallSegments = []Opt{WithSegmentBytes(64 << 10), WithMaxBatchBytes(8 << 10), WithMaxGroupBytes(8 << 10), WithMaxMessageBytes(4 << 10)}

// workload runs producers appending to topic "t" until each has sent n
// messages or hit an error. It returns once all have stopped.
func workload(l *Log, v *verifier, producers, n int, rng *rand.Rand) {
	var wg sync.WaitGroup
	sizes := make([]int, producers)
	for i := range sizes {
		sizes[i] = 1 + rng.IntN(600)
	}
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for s := 0; s < n; s++ {
				m := msg("t", fmt.Sprint("key", p), payloadFor(p, s))
				m.Headers = []ferry.Header{{Key: "pad", Value: make([]byte, sizes[p])}}
				v.attempt(string(m.Payload))
				if err := l.Append(context.Background(), m); err != nil {
					return
				}
				v.ack(m)
			}
		}(p)
	}
	wg.Wait()
}

func crashPoints() int {
	if s := os.Getenv("FERRY_CRASH_POINTS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil {
			return n
		}
	}
	if testing.Short() {
		return 200
	}
	return 1000
}

// TestCrashSweep crashes the log at random points (power loss: everything
// not fsynced is dropped, or a random share of it kept) while producers
// append concurrently in DurabilityAlways, then reopens and verifies that
// no acknowledged message was lost and nothing corrupt is served.
func TestCrashSweep(t *testing.T) {
	const producers, perProducer = 4, 30
	// Calibrate: how many mutating operations does a full run take?
	calib := vfs.NewFaultFS(vfs.NewMemFS())
	l := openTest(t, calib, smallSegments...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 3})
	workload(l, newVerifier(), producers, perProducer, rand.New(rand.NewPCG(0, 0)))
	l.Close()
	total := calib.MutatingOps()

	points := crashPoints()
	for seed := 0; seed < points; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		at := 1 + rng.Int64N(total+total/10)
		var cloneRand *rand.Rand
		if seed%2 == 1 {
			cloneRand = rand.New(rand.NewPCG(uint64(seed), 11)) // keep a random share of unsynced data
		}
		t.Run("", func(t *testing.T) {
			runCrashPoint(t, seed, at, cloneRand, rng, producers, perProducer)
		})
		if t.Failed() {
			t.Fatalf("crash point seed=%d at op %d failed (rerun with this seed)", seed, at)
		}
	}
	t.Logf("%d crash points over %d mutating operations per run", points, total)
}

func runCrashPoint(t *testing.T, seed int, at int64, cloneRand, rng *rand.Rand, producers, perProducer int) {
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	ffs.CrashAt(at, cloneRand)
	v := newVerifier()
	l, err := Open(context.Background(), testDir, append([]Opt{WithFS(ffs)}, smallSegments...)...)
	if err == nil {
		if err := l.CreateTopic(context.Background(), "t", TopicConfig{Partitions: 3}); err == nil {
			workload(l, v, producers, perProducer, rng)
		}
		l.Close()
	}
	crashed := ffs.Crashed()
	if crashed == nil {
		crashed = ffs.Crash(cloneRand)
	}
	l2, err := Open(context.Background(), testDir, append([]Opt{WithFS(crashed)}, smallSegments...)...)
	if err != nil {
		if errors.Is(err, ferry.ErrCorrupt) || len(v.acked) > 0 {
			t.Fatalf("seed %d: reopen after crash at op %d: %v", seed, at, err)
		}
		// Crashed before the directory was initialized: nothing was promised.
		return
	}
	v.check(t, l2, "t")
	// The recovered log takes writes, and they survive another reopen.
	if _, terr := l2.Topic("t"); terr == nil {
		m := msg("t", "key0", payloadFor(99, 0))
		v.attempt(string(m.Payload))
		if err := l2.Append(context.Background(), m); err != nil {
			t.Fatalf("append after recovery: %v", err)
		}
		v.ack(m)
	}
	if err := l2.Close(); err != nil {
		t.Fatalf("close after recovery: %v", err)
	}
	l3, err := Open(context.Background(), testDir, append([]Opt{WithFS(crashed)}, smallSegments...)...)
	if err != nil {
		t.Fatalf("second reopen: %v", err)
	}
	v.check(t, l3, "t")
	l3.Close()
}

// writeSample writes a log of a few segments and returns its filesystem and
// what was acknowledged.
func writeSample(t *testing.T, producers, n int) (*vfs.MemFS, *verifier) {
	fs := vfs.NewMemFS()
	l := openTest(t, fs, smallSegments...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 2})
	v := newVerifier()
	workload(l, v, producers, n, rand.New(rand.NewPCG(1, 2)))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return fs, v
}

// removeCheckpoints deletes every checkpoint durably, so that Open replays
// (and so checks) the whole log.
func removeCheckpoints(t *testing.T, fs *vfs.MemFS) {
	names, _ := fs.List(testDir + "/checkpoints")
	for _, n := range names {
		if err := fs.Remove(testDir + "/checkpoints/" + n); err != nil {
			t.Fatal(err)
		}
	}
	fs.SyncDir(testDir + "/checkpoints")
}

func lastSegment(t testing.TB, fs vfs.FS) string {
	names, err := fs.List(testDir + "/wal")
	if err != nil || len(names) == 0 {
		t.Fatalf("no segments: %v", err)
	}
	return testDir + "/wal/" + names[len(names)-1]
}

// batchStarts returns the start offset of every batch in a segment.
func batchStarts(t *testing.T, fs vfs.FS, path string) (starts []int64, size int64) {
	starts, _, size = scanBatches(t, fs, path)
	return starts, size
}

// segmentEnd returns where the last batch of a segment ends and the size
// of its file.
func segmentEnd(t *testing.T, fs vfs.FS, path string) (end, size int64) {
	_, end, size = scanBatches(t, fs, path)
	return end, size
}

// scanBatches reads a segment's batches: where each starts, where the last
// ends, and the size of the file.
func scanBatches(t *testing.T, fs vfs.FS, path string) (starts []int64, end, size int64) {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, _ = f.Size()
	r := newBatchReader(f, 0, size)
	for {
		pos := r.pos
		if _, err := r.next(); err != nil {
			return starts, end, size
		}
		starts, end = append(starts, pos), r.pos
	}
}

// TestTornTailEveryByte cuts the last segment at every byte of its last
// batches and checks that recovery truncates exactly the torn batch, keeps
// everything before it, and accepts new appends.
func TestTornTailEveryByte(t *testing.T) {
	fs, _ := writeSample(t, 1, 40)
	seg := lastSegment(t, fs)
	starts, size := batchStarts(t, fs, seg)
	if len(starts) < 3 {
		t.Fatalf("want several batches in %s, have %d", seg, len(starts))
	}
	from := starts[len(starts)-3]
	for cut := from; cut < size; cut++ {
		c := fs.CrashClone(nil)
		f, _ := c.OpenRW(seg)
		f.Truncate(cut)
		f.Close()
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(c)}, smallSegments...)...)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		// The batch containing the cut is gone, those before it are intact.
		kept := int64(0)
		for _, s := range starts {
			if s <= cut {
				kept = s
			}
		}
		// A torn batch's own trailing zero bytes count as zeros after it.
		if r := l.Recovery(); cut == kept {
			if r.TornBytes != 0 || r.ZeroTailBytes != 0 {
				t.Fatalf("cut at a batch boundary %d reported %d torn bytes and %d zeros", cut, r.TornBytes, r.ZeroTailBytes)
			}
		} else if r.TornBytes+r.ZeroTailBytes != cut-kept || r.TornBytes == 0 || r.TornFile != seg {
			t.Fatalf("cut at %d: recovery %+v, want %d bytes cut, not all zeros", cut, r, cut-kept)
		}
		readAll(t, l, "t", 0)
		readAll(t, l, "t", 1)
		if err := l.Append(context.Background(), msg("t", "k", "after")); err != nil {
			t.Fatalf("cut at %d: append after recovery: %v", cut, err)
		}
		l.Close()
	}
}

// TestZeroAndGarbageTails appends zeros or random bytes after the last
// batch, as a crash that extended the file without its data may leave.
func TestZeroAndGarbageTails(t *testing.T) {
	fs, v := writeSample(t, 2, 30)
	seg := lastSegment(t, fs)
	rng := rand.New(rand.NewPCG(3, 4))
	for i, tail := range [][]byte{make([]byte, 7), make([]byte, 4096), randBytes(rng, 13), randBytes(rng, 5000), append([]byte{0x46, 0x52, 0x59, 0x31, 0xff, 0xff, 0, 0}, randBytes(rng, 100)...)} {
		c := fs.CrashClone(nil)
		f, _ := c.OpenRW(seg)
		f.Seek(0, 2)
		f.Write(tail)
		f.Close()
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(c)}, smallSegments...)...)
		if err != nil {
			t.Fatalf("tail %d: %v", i, err)
		}
		r := l.Recovery()
		if r.TornBytes+r.ZeroTailBytes != int64(len(tail)) {
			t.Fatalf("tail %d: truncated %d + %d zero bytes, want %d", i, r.TornBytes, r.ZeroTailBytes, len(tail))
		}
		if allZero := !slices.ContainsFunc(tail, func(b byte) bool { return b != 0 }); allZero != (r.TornBytes == 0) {
			t.Fatalf("tail %d (all zeros: %v): reported %d torn bytes", i, allZero, r.TornBytes)
		}
		v.check(t, l, "t")
		l.Close()
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.UintN(256))
	}
	return b
}

// TestBitFlipEveryByte flips one bit at every byte of a log and checks that
// the damage is always detected: Open fails naming the file and offset, or
// (for the final batch only, which recovery cannot tell from a torn write)
// the batch is truncated. A wrong payload is never served.
func TestBitFlipEveryByte(t *testing.T) {
	fs, v := writeSample(t, 2, 12)
	removeCheckpoints(t, fs)
	segs, _ := fs.List(testDir + "/wal")
	for si, name := range segs {
		path := testDir + "/wal/" + name
		starts, size := batchStarts(t, fs, path)
		lastBatch := si == len(segs)-1
		step := int64(1)
		if testing.Short() {
			step = 7
		}
		for off := int64(0); off < size; off += step {
			c := fs.CrashClone(nil)
			if err := c.FlipBit(path, off, uint(off)); err != nil {
				t.Fatal(err)
			}
			l, err := Open(context.Background(), testDir, append([]Opt{WithFS(c)}, smallSegments...)...)
			inFinal := lastBatch && off >= starts[len(starts)-1]
			if err != nil {
				var ce *CorruptionError
				if !errors.As(err, &ce) || ce.File != path || !errors.Is(err, ferry.ErrCorrupt) {
					t.Fatalf("flip at %s:%d: error %v does not name the file", name, off, err)
				}
				continue
			}
			if !inFinal {
				t.Fatalf("flip at %s:%d (not in the final batch) went undetected", name, off)
			}
			if l.Recovery().TornBytes == 0 {
				t.Fatalf("flip at %s:%d in the final batch was neither reported nor truncated", name, off)
			}
			// Whatever is served must be what was written.
			for p := int32(0); p < 2; p++ {
				for _, m := range readAll(t, l, "t", p) {
					if a, ok := v.acked[m.ID]; !ok || a.payload != string(m.Payload) {
						t.Fatalf("flip at %s:%d served a wrong message %q", name, off, m.Payload)
					}
				}
			}
			l.Close()
		}
	}
}

// TestBitFlipDetectedOnRead flips a bit in data covered by a checkpoint
// (so Open does not replay it) and checks that reads report corruption
// instead of serving it.
func TestBitFlipDetectedOnRead(t *testing.T) {
	fs, _ := writeSample(t, 1, 400)
	segs, _ := fs.List(testDir + "/wal")
	path := testDir + "/wal/" + segs[0]
	starts, _ := batchStarts(t, fs, path)
	if err := fs.FlipBit(path, starts[len(starts)/2]+batchHeaderSize+sectionHeaderSize+20, 3); err != nil {
		t.Fatal(err)
	}
	// Reopen past the dedup window: otherwise rebuilding the window reads
	// the damaged batch and Open itself reports it.
	later := func() time.Time { return time.Now().Add(time.Hour) }
	l := openTest(t, fs, append([]Opt{WithClock(later)}, smallSegments...)...)
	defer l.Close()
	var corrupt error
	for p := int32(0); p < 2 && corrupt == nil; p++ {
		for off := uint64(0); ; {
			res, err := l.Read("t", p, off, ReadOpts{MaxMessages: 1})
			if err != nil {
				corrupt = err
				break
			}
			if len(res.Messages) == 0 {
				break
			}
			off = res.Next
		}
	}
	var ce *CorruptionError
	if !errors.As(corrupt, &ce) || ce.File != path {
		t.Fatalf("read of flipped data: %v", corrupt)
	}
}

// TestRepairCutsAtCorruption checks the explicit repair path: it truncates
// at the corrupt batch, removes later segments and reports both.
func TestRepairCutsAtCorruption(t *testing.T) {
	fs, _ := writeSample(t, 2, 200)
	removeCheckpoints(t, fs)
	segs, _ := fs.List(testDir + "/wal")
	if len(segs) < 2 {
		t.Fatalf("want two segments, have %v", segs)
	}
	path := testDir + "/wal/" + segs[0]
	starts, _ := batchStarts(t, fs, path)
	bad := starts[len(starts)/2]
	fs.FlipBit(path, bad+30, 1)
	_, err := Open(context.Background(), testDir, append([]Opt{WithFS(fs)}, smallSegments...)...)
	var ce *CorruptionError
	if !errors.As(err, &ce) || ce.Offset != bad {
		t.Fatalf("want corruption at %d, got %v", bad, err)
	}
	if want := fmt.Sprintf("%s at offset %d", path, bad); !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	l, err := Open(context.Background(), testDir, append([]Opt{WithFS(fs), WithRepair()}, smallSegments...)...)
	if err != nil {
		t.Fatal(err)
	}
	r := l.Recovery()
	if len(r.Repaired) != len(segs) { // the cut plus each removed later segment
		t.Fatalf("repair report %v", r.Repaired)
	}
	readAll(t, l, "t", 0)
	if err := l.Append(context.Background(), msg("t", "", "after repair")); err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// TestErrorInjectionEveryOp fails the n-th mutating filesystem operation
// (write, fsync, create, rename, directory sync...) with EIO or ENOSPC,
// tearing failed writes, for every n. After the failure no append may
// succeed, and after reopening every acknowledged message is there and
// nothing half-written is visible.
func TestErrorInjectionEveryOp(t *testing.T) {
	calib := vfs.NewFaultFS(vfs.NewMemFS())
	l := openTest(t, calib, smallSegments...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 2})
	workload(l, newVerifier(), 1, 60, rand.New(rand.NewPCG(5, 5)))
	l.Close()
	total := calib.MutatingOps()
	for n := int64(1); n <= total; n++ {
		mem := vfs.NewMemFS()
		ffs := vfs.NewFaultFS(mem)
		ffs.TearWrites(rand.New(rand.NewPCG(uint64(n), 1)))
		injected := vfs.EIO
		if n%2 == 0 {
			injected = vfs.ENOSPC
		}
		ffs.SetInjector(func(op vfs.Op, path string, seq int64) error {
			if seq == n {
				return injected
			}
			return nil
		})
		v := newVerifier()
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(ffs)}, smallSegments...)...)
		if err != nil {
			if !errors.Is(err, injected) {
				t.Fatalf("op %d: open failed with %v, want the injected %v", n, err, injected)
			}
			continue
		}
		if err := l.CreateTopic(context.Background(), "t", TopicConfig{Partitions: 2}); err == nil {
			// One producer: after its first failure, every later append must fail too.
			failedAt := -1
			for s := 0; s < 60; s++ {
				m := msg("t", "key0", payloadFor(0, s))
				v.attempt(string(m.Payload))
				err := l.Append(context.Background(), m)
				if err == nil {
					if failedAt >= 0 {
						t.Fatalf("op %d: append %d succeeded after append %d failed", n, s, failedAt)
					}
					v.ack(m)
					continue
				}
				if failedAt < 0 {
					failedAt = s
					if !errors.Is(err, ferry.ErrLogFailed) || !errors.Is(err, injected) {
						t.Fatalf("op %d: append failed with %v, want ErrLogFailed wrapping %v", n, err, injected)
					}
				}
			}
		}
		l.Close()
		ffs.SetInjector(nil)
		l2, err := Open(context.Background(), testDir, append([]Opt{WithFS(mem)}, smallSegments...)...)
		if err != nil {
			t.Fatalf("op %d: reopen after %v: %v", n, injected, err)
		}
		v.check(t, l2, "t")
		l2.Close()
	}
	t.Logf("injected an error at each of %d operations", total)
}

// TestSectionCRCIsolatesPartitions writes one batch shared by two
// partitions, damages partition 1's section, and checks that reading
// partition 1 reports the corruption while partition 0, which is read and
// verified on its own, is still served.
func TestSectionCRCIsolatesPartitions(t *testing.T) {
	fs := vfs.NewMemFS()
	l := openTest(t, fs)
	mustCreate(t, l, "t", TopicConfig{Partitions: 2})
	a := &ferry.Message{Topic: "t", Partition: 0, PinPartition: true, Payload: []byte("partition zero")}
	b := &ferry.Message{Topic: "t", Partition: 1, PinPartition: true, Payload: []byte("partition one!")}
	if err := l.Append(context.Background(), a, b); err != nil {
		t.Fatal(err)
	}
	l.Close()
	seg := lastSegment(t, fs)
	f, _ := fs.Open(seg)
	size, _ := f.Size()
	data := make([]byte, size)
	f.ReadAt(data, 0)
	f.Close()
	at := strings.LastIndex(string(data), "partition one!")
	if at < 0 {
		t.Fatal("payload not found")
	}
	fs.FlipBit(seg, int64(at+3), 2)
	later := func() time.Time { return time.Now().Add(time.Hour) } // skip the dedup rebuild's read
	l = openTest(t, fs, WithClock(later))
	defer l.Close()
	res, err := l.Read("t", 0, 0, ReadOpts{})
	if err != nil || len(res.Messages) != 1 || string(res.Messages[0].Payload) != "partition zero" {
		t.Fatalf("partition 0: %v %+v", err, res)
	}
	_, err = l.Read("t", 1, 0, ReadOpts{})
	var ce *CorruptionError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "section checksum mismatch") {
		t.Fatalf("partition 1: want a section checksum error, got %v", err)
	}
}

// TestZeroAhead checks the zeros that small group commits write ahead of
// the active segment's end: they are there while the log runs (so fsyncs
// overwrite instead of growing the file), a crash leaves them for
// recovery to cut as zeros (not as a torn append, nothing acknowledged
// lost), and no segment the writer left — at a roll or at Close — keeps
// any. Large groups, the modes without an fsync per group and
// WithZeroAhead(false) do not zero.
func TestZeroAhead(t *testing.T) {
	segOpts := []Opt{WithSegmentBytes(256 << 10), WithMaxBatchBytes(64 << 10), WithMaxGroupBytes(64 << 10), WithMaxMessageBytes(16 << 10)}
	fs := vfs.NewMemFS()
	l := openTest(t, fs, segOpts...)
	mustCreate(t, l, "t", TopicConfig{Partitions: 2})
	v := newVerifier()
	appendN := func(l *Log, from, n, size int) {
		t.Helper()
		for i := from; i < from+n; i++ {
			m := msg("t", "k"+strconv.Itoa(i%3), payloadFor(0, i))
			m.Headers = []ferry.Header{{Key: "pad", Value: make([]byte, size)}}
			v.attempt(string(m.Payload))
			if err := l.Append(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			v.ack(m)
		}
	}
	appendN(l, 0, 20, 100)
	seg := lastSegment(t, fs)
	end, size := segmentEnd(t, fs, seg)
	if size <= end {
		t.Fatalf("after small appends the active segment is %d bytes, its batches end at %d: nothing was zeroed ahead", size, end)
	}

	// A crash (everything unsynced dropped): the zeros were synced with
	// the groups, and recovery cuts them without calling them torn.
	c := fs.CrashClone(nil)
	l2 := openTest(t, c, segOpts...)
	if r := l2.Recovery(); r.TornBytes != 0 || r.ZeroTailBytes != size-end {
		t.Fatalf("after a crash: recovery %+v, want no torn bytes and %d zeros", r, size-end)
	}
	v.check(t, l2, "t")
	// Appends continue over the cut tail, roll segments, and Close leaves
	// every segment ending with its last batch.
	appendN(l2, 20, 600, 1000)
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	segs, _ := c.List(testDir + "/wal")
	if len(segs) < 3 {
		t.Fatalf("%d segments: the test meant to roll", len(segs))
	}
	for _, name := range segs {
		if end, size := segmentEnd(t, c, testDir+"/wal/"+name); end != size {
			t.Fatalf("segment %s after Close: %d bytes, its batches end at %d", name, size, end)
		}
	}
	l3 := openTest(t, c, segOpts...)
	if r := l3.Recovery(); r.TornBytes != 0 || r.ZeroTailBytes != 0 {
		t.Fatalf("reopen after Close: recovery %+v, want nothing cut", r)
	}
	v.check(t, l3, "t")
	l3.Close()

	for _, tc := range []struct {
		name string
		opts []Opt
		msgs int
		size int
	}{
		{"a large group", nil, 2000, 1000}, // past the zeros of the topic creation
		{"interval durability", []Opt{WithDurability(DurabilityInterval)}, 1, 100},
		{"no durability", []Opt{WithDurability(DurabilityNone)}, 1, 100},
		{"zeroing ahead turned off", []Opt{WithZeroAhead(false)}, 1, 100},
	} {
		fs := vfs.NewMemFS()
		l := openTest(t, fs, tc.opts...)
		mustCreate(t, l, "t", TopicConfig{Partitions: 1})
		var batch []*ferry.Message
		for i := range tc.msgs {
			m := msg("t", "k", payloadFor(0, i))
			m.Headers = []ferry.Header{{Key: "pad", Value: make([]byte, tc.size)}}
			batch = append(batch, m)
		}
		if err := l.Append(context.Background(), batch...); err != nil {
			t.Fatal(err)
		}
		l.Sync(context.Background())
		if end, size := segmentEnd(t, fs, lastSegment(t, fs)); end != size {
			t.Errorf("%s: active segment %d bytes, its batches end at %d: zeroed ahead", tc.name, size, end)
		}
		l.Close()
	}
}
