package commitlog

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// benchDir returns a directory on the real disk (FERRY_BENCH_DIR to choose
// which disk), since fsync cost is what these benchmarks measure.
func benchDir(b *testing.B) string {
	if d := os.Getenv("FERRY_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

// BenchmarkAppend measures acknowledged appends of 256-byte messages from
// 1, 16 and 64 concurrent producers, one message per Append, in each
// durability mode, on the real disk.
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []Durability{DurabilityAlways, DurabilityInterval, DurabilityNone} {
		for _, producers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/producers=%d", mode, producers), func(b *testing.B) {
				benchAppend(b, mode, producers, 1)
			})
		}
	}
}

// BenchmarkAppendBatched measures 64 producers appending batches of 100.
func BenchmarkAppendBatched(b *testing.B) {
	benchAppend(b, DurabilityAlways, 64, 100)
}

// openBench opens a log on the real disk with an 8-partition topic "bench".
func openBench(b *testing.B, opts ...Opt) *Log {
	l, err := Open(context.Background(), benchDir(b), opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	if err := l.CreateTopic(context.Background(), "bench", TopicConfig{Partitions: 8}); err != nil {
		b.Fatal(err)
	}
	return l
}

func benchAppend(b *testing.B, mode Durability, producers, batch int) {
	ctx := context.Background()
	l := openBench(b, WithDurability(mode))
	payload := make([]byte, 256)
	var next atomic.Int64
	b.SetBytes(int64(len(payload) * batch))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			key := []byte(strconv.Itoa(p))
			msgs := make([]ferry.Message, batch)
			ptrs := make([]*ferry.Message, batch)
			for next.Add(1) <= int64(b.N) {
				for i := range msgs {
					msgs[i] = ferry.Message{Topic: "bench", Key: key, Payload: payload}
					ptrs[i] = &msgs[i]
				}
				if err := l.Append(ctx, ptrs...); err != nil {
					b.Error(err)
					return
				}
			}
		}(p)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkAppendAsync measures 64 publishers each keeping up to 64
// single-message appends in flight (durability always): what a publisher
// that pipelines, as NATS and Kafka clients do, gets from group commit.
func BenchmarkAppendAsync(b *testing.B) {
	const publishers, window = 64, 64
	ctx := context.Background()
	l := openBench(b)
	payload := make([]byte, 256)
	var next atomic.Int64
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for p := 0; p < publishers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			key := []byte(strconv.Itoa(p))
			inflight := make(chan struct{}, window)
			for next.Add(1) <= int64(b.N) {
				inflight <- struct{}{}
				l.AppendAsync(ctx, func(_ *Batch, err error) {
					if err != nil {
						b.Error(err)
					}
					<-inflight
				}, &ferry.Message{Topic: "bench", Key: key, Payload: payload})
			}
			for i := 0; i < window; i++ {
				inflight <- struct{}{}
			}
		}(p)
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkReadPartition measures sequential reads of one partition of a
// log written by several interleaved partitions.
func BenchmarkReadPartition(b *testing.B) {
	ctx := context.Background()
	l, err := Open(ctx, benchDir(b), WithDurability(DurabilityNone))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	l.CreateTopic(ctx, "bench", TopicConfig{Partitions: 4})
	payload := make([]byte, 256)
	const total = 200_000
	batch := make([]*ferry.Message, 0, 1000)
	for i := 0; i < total; i++ {
		batch = append(batch, &ferry.Message{Topic: "bench", PinPartition: true, Partition: int32(i % 4), Payload: payload})
		if len(batch) == cap(batch) {
			if err := l.Append(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	read := 0
	for off := uint64(0); read < b.N; {
		res, err := l.Read("bench", 0, off, ReadOpts{MaxMessages: 1000})
		if err != nil {
			b.Fatal(err)
		}
		read += len(res.Messages)
		off = res.Next
		if len(res.Messages) == 0 {
			off = 0
		}
	}
	b.ReportMetric(float64(read)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkReopenAfterCrash measures Open of a log holding FERRY_REOPEN_MB
// (default 1024) MiB that was not closed (its writer "crashed"): recovery
// loads the checkpoint of the last segment roll and replays only the tail.
func BenchmarkReopenAfterCrash(b *testing.B) {
	mb := 1024
	if s := os.Getenv("FERRY_REOPEN_MB"); s != "" {
		mb, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	dir := benchDir(b)
	l, err := Open(ctx, dir, WithDurability(DurabilityNone))
	if err != nil {
		b.Fatal(err)
	}
	l.CreateTopic(ctx, "bench", TopicConfig{Partitions: 16})
	payload := make([]byte, 256)
	batch := make([]*ferry.Message, 0, 1000)
	for written := 0; written < mb<<20; written += len(payload) + 80 {
		batch = append(batch, &ferry.Message{Topic: "bench", Key: []byte(strconv.Itoa(written % 1000)), Payload: payload})
		if len(batch) == cap(batch) {
			if err := l.Append(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	l.Sync(ctx)
	// Simulate a crash: abandon the log without Close (no final checkpoint)
	// and release its lock by closing files only.
	l.closed.Store(true)
	close(l.stop)
	<-l.stopped
	l.closeFiles()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l2, err := Open(ctx, dir, WithReadOnly())
		if err != nil {
			b.Fatal(err)
		}
		r := l2.Recovery()
		b.ReportMetric(float64(r.BytesScanned)/(1<<20), "MiB-replayed")
		l2.Close()
	}
	b.ReportMetric(float64(mb), "MiB-log")
}

// BenchmarkReopenTornBatch measures Open after a crash tore the last
// batch of the log, for torn batches of 128 KiB to 16 MiB (in memory, so
// that what it measures is recovery's own work: telling the torn tail
// from damage in the middle of the log, and cutting it).
//
// Two payloads: random bytes, and bytes that look like batch headers every
// 24 bytes, each claiming a length of 64 KiB (or up to the payload end) —
// the worst case for the search that tells a torn tail from corruption,
// which must check a CRC at each (it once did so one by one, quadratic).
func BenchmarkReopenTornBatch(b *testing.B) {
	for _, kind := range []string{"random", "headers"} {
		for _, size := range []int{128 << 10, 1 << 20, 16 << 20} {
			b.Run(fmt.Sprintf("payload=%s/batch=%dKiB", kind, size>>10), func(b *testing.B) {
				benchReopenTorn(b, kind, size)
			})
		}
	}
}

func benchReopenTorn(b *testing.B, kind string, size int) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	opts := []Opt{WithFS(fs), WithMaxBatchBytes(17 << 20), WithMaxQueueBytes(64 << 20)}
	l, err := Open(ctx, testDir, opts...)
	if err != nil {
		b.Fatal(err)
	}
	if err := l.CreateTopic(ctx, "bench", TopicConfig{Partitions: 1}); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var msgs []*ferry.Message
	for n := 0; n < size; n += 1 << 20 {
		p := make([]byte, min(1<<20-256, size-n))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		if kind == "headers" {
			for i := 0; i+batchHeaderSize <= len(p); i += batchHeaderSize {
				binary.LittleEndian.PutUint32(p[i:], batchMagic)
				binary.LittleEndian.PutUint32(p[i+4:], uint32(min(64<<10, len(p)-i)))
				p[i+12], p[i+14] = batchVersion, 1
			}
		}
		msgs = append(msgs, &ferry.Message{Topic: "bench", Payload: p})
	}
	if err := l.Append(ctx, msgs...); err != nil {
		b.Fatal(err)
	}
	l.Close()
	seg := lastSegment(b, fs)
	end, _ := fs.Stat(seg)
	// Tear: keep all but the last 100 bytes of the batch.
	f, _ := fs.OpenRW(seg)
	f.Truncate(end.Size() - 100)
	f.Sync()
	f.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := fs.CrashClone(nil)
		l2, err := Open(ctx, testDir, append(opts, WithFS(c))...)
		if err != nil {
			b.Fatal(err)
		}
		if l2.Recovery().TornBytes == 0 {
			b.Fatal("the torn batch was not cut")
		}
		l2.Close()
	}
}

// BenchmarkAppendAcrossRolls measures the latency of synchronous appends
// while the log rolls every 4 MiB with a large index: 8 partitions written
// in shared 8-message batches (an index entry per partition per batch),
// FERRY_INDEX_ENTRIES (default 200000) entries before the timer starts.
// checkpoints=delta is the log as it is; checkpoints=full writes the whole
// state at every roll, as it did before checkpoint deltas.
func BenchmarkAppendAcrossRolls(b *testing.B) {
	entries := 200_000
	if s := os.Getenv("FERRY_INDEX_ENTRIES"); s != "" {
		entries, _ = strconv.Atoi(s)
	}
	for _, full := range []bool{false, true} {
		name := "checkpoints=delta"
		if full {
			name = "checkpoints=full"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			l := openBench(b, WithSegmentBytes(4<<20), WithMaxBatchBytes(1<<20), WithMaxGroupBytes(1<<20), optFunc(func(c *cfg) { c.fullCheckpoints = full }))
			batch := func(i int) []*ferry.Message {
				ms := make([]*ferry.Message, 8)
				for p := range ms {
					ms[p] = &ferry.Message{Topic: "bench", Partition: int32(p), PinPartition: true, Payload: make([]byte, 100)}
				}
				return ms
			}
			for i := 0; i < entries/8; i++ {
				if err := l.Append(ctx, batch(i)...); err != nil {
					b.Fatal(err)
				}
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := l.Append(ctx, batch(i)...); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			q := func(f float64) float64 { return float64(lat[min(len(lat)-1, int(f*float64(len(lat))))].Microseconds()) }
			b.ReportMetric(q(0.5), "p50-µs")
			b.ReportMetric(q(0.99), "p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
		})
	}
}
