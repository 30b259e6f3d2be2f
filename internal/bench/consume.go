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
	"github.com/ferrymq/ferry/vfs"
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
// before ack) and measures the publish acknowledgement alone, then, with
// a consumer running in the same process, the acknowledgement and the
// time from the publish call to the handler. The disk's own fsync latency
// is measured first: an append that arrives while a group commit's fsync
// is under way waits for that fsync and its own, so about twice the
// fsync's p99 is the floor under the ack p99 with one writer.
func latencyScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	probes, fsync, err := fsyncResults("latency", dir, s.fsyncProbes)
	if err != nil {
		return nil, err
	}
	probes[1].Note = fmt.Sprintf("floor under the ack p99 with one fsync in flight: about 2 × p99 = %.2f ms", 2*fsync.P99Ms)
	l, err := openLog(ctx, filepath.Join(dir, "ferry-latency"), "alone", "in")
	if err != nil {
		return nil, err
	}
	defer l.Close()
	total := int(float64(s.latencyRate) * s.latencyFor.Seconds())
	offered := fmt.Sprintf("at %d msg/s offered (fsync before ack)", s.latencyRate)

	// Publishing alone.
	start := time.Now()
	acks, err := paced(ctx, l, "alone", s.latencyRate, total)
	if err != nil {
		return nil, err
	}
	el := time.Since(start)
	alone := Result{Scenario: "latency-ack", System: "ferry publish ack " + offered + ", no consumer", FsyncAck: "yes", Messages: total, Seconds: el.Seconds(), MsgsPerSec: rate(total, el)}
	alone.percentiles(acks)

	// Publishing with a consumer of 64 lanes in the process.
	b := embedded.New(l)
	defer b.Close()
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
	start = time.Now()
	acks, err = paced(ctx, l, "in", s.latencyRate, total)
	if err != nil {
		return nil, err
	}
	select {
	case <-all:
	case <-time.After(time.Minute):
		return nil, fmt.Errorf("handled %d of %d messages in a minute", len(lat), total)
	}
	el = time.Since(start)
	cancel()
	<-done
	ack := Result{Scenario: "latency-ack", System: "ferry publish ack " + offered + ", consumer running", FsyncAck: "yes", Messages: total, Seconds: el.Seconds(), MsgsPerSec: rate(total, el)}
	ack.percentiles(acks)
	res := Result{Scenario: "latency", System: "ferry publish-to-handler " + offered, Messages: total, Seconds: el.Seconds(), MsgsPerSec: rate(total, el)}
	mu.Lock()
	res.percentiles(lat)
	res.latencies = lat
	mu.Unlock()
	return append(probes, alone, ack, res), nil
}

// paced appends total messages to topic at rate msg/s in 1 ms ticks, each
// asynchronously (as a pipelining producer does) and stamped with the time
// of its call in its first 8 payload bytes, and returns every
// acknowledgement's latency.
func paced(ctx context.Context, l *commitlog.Log, topic string, rate, total int) ([]time.Duration, error) {
	perTick := max(rate/1000, 1)
	tick := time.NewTicker(time.Duration(float64(time.Second) * float64(perTick) / float64(rate)))
	defer tick.Stop()
	var mu sync.Mutex
	acks := make([]time.Duration, 0, total)
	var failed error
	var wg sync.WaitGroup
	wg.Add(total)
	for sent := 0; sent < total; {
		<-tick.C
		for range min(perTick, total-sent) {
			p := make([]byte, payloadSize)
			t := time.Now()
			binary.LittleEndian.PutUint64(p, uint64(t.UnixNano()))
			l.AppendAsync(ctx, func(_ *commitlog.Batch, err error) {
				mu.Lock()
				if err != nil {
					failed = err
				} else {
					acks = append(acks, time.Since(t))
				}
				mu.Unlock()
				wg.Done()
			}, &ferry.Message{Topic: topic, Key: []byte(strconv.Itoa(sent % 1000)), Payload: p})
			sent++
		}
	}
	wg.Wait()
	return acks, failed
}
