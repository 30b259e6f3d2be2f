package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/internal/vfs"
)

// backlog writes n messages over keys to topic "in" (8 partitions).
func backlog(ctx context.Context, l *commitlog.Log, n, keys int) error {
	if err := l.CreateTopic(ctx, "in", commitlog.TopicConfig{Partitions: 8}); err != nil {
		return err
	}
	payload := make([]byte, payloadSize)
	msgs := make([]*ferry.Message, 0, 1000)
	for i := range n {
		msgs = append(msgs, &ferry.Message{Topic: "in", Key: []byte(strconv.Itoa(i % keys)), Payload: payload})
		if len(msgs) == cap(msgs) || i == n-1 {
			if err := l.Append(ctx, msgs...); err != nil {
				return err
			}
			msgs = msgs[:0]
		}
	}
	return nil
}

// consumeAll runs a consumer of "in" until n messages were handled and
// returns how long it took.
func consumeAll(ctx context.Context, b *embedded.Backend, n int, handler func(), opts ...consumer.Opt) (time.Duration, error) {
	var handled atomic.Int64
	all := make(chan struct{})
	c, err := consumer.New(b, "bench", []string{"in"}, func(context.Context, *ferry.Message) error {
		handler()
		if handled.Add(1) == int64(n) {
			close(all)
		}
		return nil
	}, append([]consumer.Opt{consumer.WithConcurrency(64), consumer.WithMaxBuffered(8192), consumer.WithCommitInterval(100 * time.Millisecond)}, opts...)...)
	if err != nil {
		return 0, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Run(rctx) }()
	select {
	case <-all:
	case err := <-done:
		cancel()
		return 0, fmt.Errorf("consumer ended early: %v", err)
	}
	el := time.Since(start)
	cancel()
	return el, <-done
}

// memLog is an in-memory log with fsync off (the runtime is what is measured).
func memLog(ctx context.Context) (*commitlog.Log, error) {
	return commitlog.Open(ctx, "/bench", commitlog.WithFS(vfs.NewMemFS()), commitlog.WithDurability(commitlog.DurabilityNone))
}

func consumeScenario(ctx context.Context, _ string, s sizes) ([]Result, error) {
	var out []Result
	for _, sc := range []struct {
		name    string
		n       int
		handler func(*atomic.Int64) func()
	}{
		{"runtime, no-op handler", s.consumeN, func(*atomic.Int64) func() { return func() {} }},
		{"runtime, 1 ms handler, 10k keys, concurrency 64", s.lanesN, func(slept *atomic.Int64) func() {
			return func() {
				t := time.Now()
				time.Sleep(time.Millisecond)
				slept.Add(int64(time.Since(t)))
			}
		}},
	} {
		l, err := memLog(ctx)
		if err != nil {
			return nil, err
		}
		if err := backlog(ctx, l, sc.n, 10_000); err != nil {
			l.Close()
			return nil, err
		}
		b := embedded.New(l)
		var slept atomic.Int64
		el, err := consumeAll(ctx, b, sc.n, sc.handler(&slept))
		b.Close()
		l.Close()
		if err != nil {
			return nil, err
		}
		res := Result{Scenario: "consume", System: sc.name, Concurrency: 64, Messages: sc.n, Seconds: el.Seconds(), MsgsPerSec: rate(sc.n, el)}
		if slept.Load() > 0 {
			mean := time.Duration(slept.Load() / int64(sc.n))
			bound := 64 / mean.Seconds()
			res.Ratio = res.MsgsPerSec / bound
			res.Note = fmt.Sprintf("ratio: of the Little's-law bound 64/%v = %.0f msg/s (nominal 64k: %.0f%%)", mean.Round(time.Microsecond), bound, res.MsgsPerSec/64_000*100)
		}
		out = append(out, res)
	}
	return out, nil
}

// latencyScenario offers messages at a fixed rate to a durable log (fsync
// before ack) and measures, per message, the time from the publish call
// to the handler.
func latencyScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	l, err := commitlog.Open(ctx, filepath.Join(dir, "ferry-latency"))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	if err := l.CreateTopic(ctx, "in", commitlog.TopicConfig{Partitions: 8}); err != nil {
		return nil, err
	}
	b := embedded.New(l)
	defer b.Close()
	total := int(float64(s.latencyRate) * s.latencyFor.Seconds())
	var mu sync.Mutex
	lat := make([]time.Duration, 0, total)
	all := make(chan struct{})
	c, err := consumer.New(b, "latency", []string{"in"}, func(_ context.Context, m *ferry.Message) error {
		sent := time.Unix(0, int64(binary.LittleEndian.Uint64(m.Payload)))
		d := time.Since(sent)
		mu.Lock()
		lat = append(lat, d)
		if len(lat) == total {
			close(all)
		}
		mu.Unlock()
		return nil
	}, consumer.WithConcurrency(64), consumer.WithCommitInterval(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	// Pace in 1 ms ticks; each message is appended asynchronously (as a
	// pipelining producer does) and timestamped at the call.
	perTick := max(s.latencyRate/1000, 1)
	tick := time.NewTicker(time.Duration(float64(time.Second) * float64(perTick) / float64(s.latencyRate)))
	defer tick.Stop()
	var ackMu sync.Mutex
	acks := make([]time.Duration, 0, total)
	start := time.Now()
	for sent := 0; sent < total; {
		<-tick.C
		for range min(perTick, total-sent) {
			p := make([]byte, payloadSize)
			t := time.Now()
			binary.LittleEndian.PutUint64(p, uint64(t.UnixNano()))
			l.AppendAsync(ctx, func(_ *commitlog.Batch, err error) {
				if err == nil {
					ackMu.Lock()
					acks = append(acks, time.Since(t))
					ackMu.Unlock()
				}
			}, &ferry.Message{Topic: "in", Key: []byte(strconv.Itoa(sent % 1000)), Payload: p})
			sent++
		}
	}
	select {
	case <-all:
	case <-time.After(time.Minute):
		return nil, fmt.Errorf("handled %d of %d messages in a minute", len(lat), total)
	}
	el := time.Since(start)
	cancel()
	<-done
	ack := Result{Scenario: "latency-ack", System: fmt.Sprintf("ferry publish ack at %d msg/s offered (fsync before ack)", s.latencyRate), Messages: total, Seconds: el.Seconds(), MsgsPerSec: rate(total, el)}
	ackMu.Lock()
	ack.percentiles(acks)
	ackMu.Unlock()
	res := Result{Scenario: "latency", System: fmt.Sprintf("ferry publish-to-handler at %d msg/s offered (fsync before ack)", s.latencyRate), Messages: total, Seconds: el.Seconds(), MsgsPerSec: rate(total, el)}
	mu.Lock()
	res.percentiles(lat)
	mu.Unlock()
	return []Result{ack, res}, nil
}
