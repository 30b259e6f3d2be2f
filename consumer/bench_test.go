package consumer

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/internal/memlog"
)

// publishBacklog appends n messages of 256 bytes over keys to topic "in"
// (8 partitions), in batches of 1000.
func publishBacklog(b *testing.B, l *commitlog.Log, be *embedded.Backend, n, keys int) {
	ctx := context.Background()
	if err := be.EnsureTopic(ctx, "in", 8); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 256)
	batch := make([]*ferry.Message, 0, 1000)
	for i := 0; i < n; i++ {
		batch = append(batch, &ferry.Message{Topic: "in", Key: []byte(strconv.Itoa(i % keys)), Payload: payload})
		if len(batch) == cap(batch) || i == n-1 {
			if err := l.Append(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// timeConsume times a consumer of "in" running handler until n messages
// are handled, and reports msgs/s.
func timeConsume(b *testing.B, be *embedded.Backend, n int, handler func(), opts ...Opt) {
	timeConsumeCtx(b, be, n, func(context.Context, *ferry.Message) error { handler(); return nil }, opts...)
}

// timeConsumeCtx is timeConsume with a handler that sees its context and
// message.
func timeConsumeCtx(b *testing.B, be *embedded.Backend, n int, handler Handler, opts ...Opt) {
	var handled atomic.Int64
	all := make(chan struct{})
	c, err := New(be, "bench", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		if err := handler(ctx, m); err != nil {
			return err
		}
		if handled.Add(1) == int64(n) {
			close(all)
		}
		return nil
	}, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	<-all
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}

// benchConsume publishes b.N messages over keys (untimed), then times a
// consumer with the given concurrency and handler until all are handled.
func benchConsume(b *testing.B, keys, concurrency int, handler func(), opts ...Opt) {
	be, l := memlog.Backend(b, commitlog.WithDurability(commitlog.DurabilityNone))
	publishBacklog(b, l, be, b.N, keys)
	timeConsume(b, be, b.N, handler, append([]Opt{WithConcurrency(concurrency), WithMaxBuffered(8192), WithCommitInterval(100 * time.Millisecond)}, opts...)...)
}

// BenchmarkConsumeNoop: runtime throughput with a handler that does
// nothing (lanes on: 10k keys over 8 partitions, concurrency 64).
func BenchmarkConsumeNoop(b *testing.B) {
	benchConsume(b, 10_000, 64, func() {})
}

// BenchmarkLanes1ms: a 1 ms handler over 10k keys at concurrency 64. The
// Little's-law bound is 64 / 1 ms = 64k msg/s; efficiency is the share of
// it reached.
func BenchmarkLanes1ms(b *testing.B) {
	var slept atomic.Int64
	benchConsume(b, 10_000, 64, func() {
		t := time.Now()
		time.Sleep(time.Millisecond)
		slept.Add(int64(time.Since(t)))
	})
	rate := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(rate/64_000*100, "%-of-bound")
	// time.Sleep(1ms) takes longer than 1 ms (timer slack); the bound for
	// the handler as it really ran is concurrency / its mean duration.
	mean := time.Duration(slept.Load() / int64(b.N))
	b.ReportMetric(float64(mean.Microseconds()), "µs/handler")
	b.ReportMetric(rate/(64/mean.Seconds())*100, "%-of-measured-bound")
}

// BenchmarkExactlyOnce: exactly-once consume-transform-produce, each input
// emitting one output (1000 keys over 8 partitions, concurrency 64, the
// idempotency store in the log): every input is one atomic batch of
// output, processed marker and watermark.
func BenchmarkExactlyOnce(b *testing.B) {
	be, l := memlog.Backend(b, commitlog.WithDurability(commitlog.DurabilityNone))
	publishBacklog(b, l, be, b.N, 1000)
	ctx := context.Background()
	if err := be.EnsureTopic(ctx, "out", 8); err != nil {
		b.Fatal(err)
	}
	store, err := idempotency.OpenLog(ctx, be, "bench.processed", time.Hour, 1_000_000)
	if err != nil {
		b.Fatal(err)
	}
	timeConsumeCtx(b, be, b.N, func(ctx context.Context, m *ferry.Message) error {
		return Emit(ctx, &ferry.Message{Topic: "out", Key: m.Key, Payload: m.Payload})
	}, WithConcurrency(64), WithMaxBuffered(8192), WithCommitInterval(100*time.Millisecond), WithExactlyOnce(store))
}
