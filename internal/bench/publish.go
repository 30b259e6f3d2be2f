package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

const payloadSize = 256

// publishFn publishes one message synchronously (durable as its system
// promises when it returns).
type publishFn func(ctx context.Context, worker, seq int) error

// drive runs n synchronous publishers of pub for d and measures each call:
// driveAsync with one publish in flight per publisher.
func drive(ctx context.Context, n int, d time.Duration, pub publishFn) (int, time.Duration, []time.Duration, error) {
	return driveAsync(ctx, n, 1, d, func(ctx context.Context, w, seq int, done func(error)) { done(pub(ctx, w, seq)) })
}

func publishScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	payload := make([]byte, payloadSize)
	// The disk's own fsync latency, measured first, bounds what any
	// fsync-before-ack system can do for synchronous publishers: each
	// waits for at least one fsync per message.
	out, fsync, err := fsyncResults("publish", dir, s.fsyncProbes)
	if err != nil {
		return nil, err
	}
	for _, n := range s.concurrencies {
		// ferry: the embedded log, fsync before ack (group commit).
		l, err := openLog(ctx, filepath.Join(dir, fmt.Sprintf("ferry-pub-%d", n)), "bench")
		if err != nil {
			return nil, err
		}
		settle()
		cnt, el, lat, err := drive(ctx, n, s.publishFor, func(ctx context.Context, w, seq int) error {
			return l.Append(ctx, &ferry.Message{Topic: "bench", Key: []byte(strconv.Itoa(w)), Payload: payload})
		})
		l.Close()
		if err != nil {
			return nil, err
		}
		ferryRes := Result{Scenario: "publish", System: "ferry (fsync before ack)", FsyncAck: "yes", Concurrency: n, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
			Note: fmt.Sprintf("%d synchronous publishers that each wait for an fsync cannot pass %d × %.0f fsyncs/s = %.0f msg/s on this disk", n, n, fsync.MsgsPerSec, float64(n)*fsync.MsgsPerSec)}
		ferryRes.percentiles(lat)
		out = append(out, ferryRes)
		for _, mode := range []struct {
			name string
			sync bool
		}{{"jetstream (default: fsync every 2 min)", false}, {"jetstream (sync_always)", true}} {
			res, err := publishJetStream(ctx, filepath.Join(dir, fmt.Sprintf("js-%d-%v", n, mode.sync)), mode.sync, n, s.publishFor, payload)
			if err != nil {
				return nil, err
			}
			res.System, res.FsyncAck = mode.name, yesNo(mode.sync)
			out = append(out, res)
			ratio := ferryRes.MsgsPerSec / res.MsgsPerSec
			out[len(out)-1].Ratio = ratio
			out[len(out)-1].Note = fmt.Sprintf("ferry is %.2fx this", ratio)
		}
	}
	return out, nil
}

// withJetStream runs an in-process nats-server (file store in dir, with
// sync_always or not) with a stream BENCH on bench.>, and calls run.
func withJetStream(ctx context.Context, dir string, syncAlways bool, run func(jetstream.JetStream) (Result, error)) (Result, error) {
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true, SyncAlways: syncAlways})
	if err != nil {
		return Result{}, err
	}
	go srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(10 * time.Second) {
		return Result{}, fmt.Errorf("nats-server did not start")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return Result{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return Result{}, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
		return Result{}, err
	}
	return run(js)
}

// publishJetStream runs n synchronous JetStream publishers.
func publishJetStream(ctx context.Context, dir string, syncAlways bool, n int, d time.Duration, payload []byte) (Result, error) {
	return withJetStream(ctx, dir, syncAlways, func(js jetstream.JetStream) (Result, error) {
		settle()
		cnt, el, lat, err := drive(ctx, n, d, func(ctx context.Context, w, seq int) error {
			_, err := js.Publish(ctx, "bench."+strconv.Itoa(w%8), payload)
			return err
		})
		res := Result{Scenario: "publish", Concurrency: n, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el)}
		res.percentiles(lat)
		return res, err
	})
}

// sendFn starts one publish and calls done with its acknowledgement.
type sendFn func(ctx context.Context, worker, seq int, done func(error))

// driveAsync runs n publishers for d, each keeping up to window publishes
// in flight (pipelining, as NATS and Kafka clients do), and measures each
// from the call to its acknowledgement.
func driveAsync(ctx context.Context, n, window int, d time.Duration, send sendFn) (int, time.Duration, []time.Duration, error) {
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		mu       sync.Mutex
		all      []time.Duration
		firstErr error
	)
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots := make(chan struct{}, window)
			var inflight sync.WaitGroup
			var mine []time.Duration
			var mineMu sync.Mutex
			for seq := 0; !stop.Load(); seq++ {
				slots <- struct{}{}
				inflight.Add(1)
				t := time.Now()
				send(ctx, w, seq, func(err error) {
					d := time.Since(t)
					mineMu.Lock()
					if err == nil {
						mine = append(mine, d)
					}
					mineMu.Unlock()
					if err != nil {
						mu.Lock()
						if firstErr == nil {
							firstErr = err
						}
						mu.Unlock()
						stop.Store(true)
					}
					<-slots
					inflight.Done()
				})
			}
			inflight.Wait()
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	return len(all), time.Since(start), all, firstErr
}

// publishAsyncScenario: 64 publishers, each with 16 publishes in flight.
func publishAsyncScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	const n, window = 64, 16
	payload := make([]byte, payloadSize)
	l, err := openLog(ctx, filepath.Join(dir, "ferry-pub-async"), "bench")
	if err != nil {
		return nil, err
	}
	settle()
	cnt, el, lat, err := driveAsync(ctx, n, window, s.publishFor, func(ctx context.Context, w, seq int, done func(error)) {
		l.AppendAsync(ctx, func(_ *commitlog.Batch, err error) { done(err) }, &ferry.Message{Topic: "bench", Key: []byte(strconv.Itoa(w)), Payload: payload})
	})
	l.Close()
	if err != nil {
		return nil, err
	}
	ferryRes := Result{Scenario: "publish-pipelined", System: "ferry AppendAsync (fsync before ack)", FsyncAck: "yes", Concurrency: n, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
		Note: fmt.Sprintf("%d publishers × %d in flight", n, window)}
	ferryRes.percentiles(lat)
	out := []Result{ferryRes}
	for _, mode := range []struct {
		name string
		sync bool
	}{{"jetstream PublishAsync (default)", false}, {"jetstream PublishAsync (sync_always)", true}} {
		res, err := withJetStream(ctx, filepath.Join(dir, fmt.Sprintf("js-async-%v", mode.sync)), mode.sync, func(js jetstream.JetStream) (Result, error) {
			settle()
			cnt, el, lat, err := driveAsync(ctx, n, window, s.publishFor, func(ctx context.Context, w, seq int, done func(error)) {
				f, err := js.PublishAsync("bench."+strconv.Itoa(w%8), payload)
				if err != nil {
					done(err)
					return
				}
				go func() {
					select {
					case <-f.Ok():
						done(nil)
					case err := <-f.Err():
						done(err)
					}
				}()
			})
			res := Result{Scenario: "publish-pipelined", Concurrency: n, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el)}
			res.percentiles(lat)
			return res, err
		})
		if err != nil {
			return nil, err
		}
		res.System, res.FsyncAck = mode.name, yesNo(mode.sync)
		res.Ratio = ferryRes.MsgsPerSec / res.MsgsPerSec
		res.Note = fmt.Sprintf("ferry is %.2fx this", res.Ratio)
		out = append(out, res)
	}
	return out, nil
}
