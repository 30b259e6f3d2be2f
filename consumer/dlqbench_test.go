package consumer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// BenchmarkDLQ100k: a group's DLQ holds 100,000 dead letters over 10,000
// keys of 8 partitions (a blocker and 9 parked messages a key), written
// 16 to a batch (as concurrent dead-letter writes share a group commit).
// It reports
//
//   - start_ms: from Run until every partition handles a new message (each
//     start reads the DLQ index, caught up once for the consumer);
//
//   - index_MiB: the heap the index of the 100k entries holds;
//
//   - index_build_ms: reading the 100k entries into an index (what the
//     consumer's first partition start waits for; later ones read only
//     what was appended since);
//
//   - release_s: from a redrive of everything until all 100k entries were
//     handled and the 10k keys released.
//
//     go test -run '^$' -bench BenchmarkDLQ100k -benchtime 1x ./consumer/
func BenchmarkDLQ100k(b *testing.B) {
	const keys, perKey, parts = 10000, 10, 8
	for b.Loop() {
		ctx := context.Background()
		be := newBackend(b)
		if err := be.EnsureTopic(ctx, "in", parts); err != nil {
			b.Fatal(err)
		}
		if err := be.EnsureTopic(ctx, "g.dlq", 1); err != nil {
			b.Fatal(err)
		}
		now := time.Now()
		batch := make([]*ferry.Message, 0, 16)
		for i := 0; i < perKey; i++ {
			for k := 0; k < keys; k++ {
				class := dlq.ClassParked
				if i == 0 {
					class = retry.ClassPermanent
				}
				m := &ferry.Message{ID: ferry.NewID(), Topic: "in", Partition: int32(k % parts), Offset: uint64(i*keys + k), Key: []byte(fmt.Sprintf("key-%d", k)), Payload: []byte("payload of a dead letter")}
				batch = append(batch, dlq.NewEntry(m, "g.dlq", dlq.Failure{Group: "g", Handler: "h", Attempts: 1, First: now, Last: now, Err: errors.New("poison"), Class: class}))
				if len(batch) == cap(batch) {
					if err := be.Publish(ctx, batch...); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
		}

		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ix := dlq.NewIndex(be, "g.dlq")
		built := time.Now()
		if err := ix.CatchUp(ctx); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(built).Milliseconds()), "index_build_ms")
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "index_MiB")
		runtime.KeepAlive(ix)

		var handled, fresh atomic.Int64
		h := func(ctx context.Context, m *ferry.Message) error {
			if string(m.Payload) == "fresh" {
				fresh.Add(1)
			} else {
				handled.Add(1)
			}
			return nil
		}
		for p := 0; p < parts; p++ {
			if err := be.Publish(ctx, &ferry.Message{Topic: "in", Partition: int32(p), PinPartition: true, Key: []byte("fresh"), Payload: []byte("fresh")}); err != nil {
				b.Fatal(err)
			}
		}
		c, err := New(be, "g", []string{"in"}, h, WithCommitInterval(100*time.Millisecond))
		if err != nil {
			b.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		began := time.Now()
		go func() { done <- c.Run(rctx) }()
		for fresh.Load() < parts {
			time.Sleep(time.Millisecond)
		}
		b.ReportMetric(float64(time.Since(began).Milliseconds()), "start_ms")

		began = time.Now()
		if _, err := dlq.Open(be, "g.dlq").Redrive(ctx, dlq.RedriveOpts{}); err != nil {
			b.Fatal(err)
		}
		for handled.Load() < keys*perKey || c.Stats().ParkedKeys > 0 {
			time.Sleep(5 * time.Millisecond)
		}
		b.ReportMetric(time.Since(began).Seconds(), "release_s")
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}
