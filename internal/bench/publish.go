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

// drive runs n publishers of pub for d and measures each call.
func drive(ctx context.Context, n int, d time.Duration, pub publishFn) (int, time.Duration, []time.Duration, error) {
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
			var mine []time.Duration
			for seq := 0; !stop.Load(); seq++ {
				t := time.Now()
				if err := pub(ctx, w, seq); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t))
			}
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

func publishScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	payload := make([]byte, payloadSize)
	var out []Result
	for _, n := range s.concurrencies {
		// ferry: the embedded log, fsync before ack (group commit).
		l, err := commitlog.Open(ctx, filepath.Join(dir, fmt.Sprintf("ferry-pub-%d", n)))
		if err != nil {
			return nil, err
		}
		if err := l.CreateTopic(ctx, "bench", commitlog.TopicConfig{Partitions: 8}); err != nil {
			l.Close()
			return nil, err
		}
		cnt, el, lat, err := drive(ctx, n, s.publishFor, func(ctx context.Context, w, seq int) error {
			return l.Append(ctx, &ferry.Message{Topic: "bench", Key: []byte(strconv.Itoa(w)), Payload: payload})
		})
		l.Close()
		if err != nil {
			return nil, err
		}
		ferryRes := Result{Scenario: "publish", System: "ferry (fsync before ack)", Concurrency: n, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el)}
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
			res.System = mode.name
			out = append(out, res)
			ratio := ferryRes.MsgsPerSec / res.MsgsPerSec
			out[len(out)-1].Ratio = ratio
			out[len(out)-1].Note = fmt.Sprintf("ferry is %.2fx this", ratio)
		}
	}
	return out, nil
}

// publishJetStream runs an in-process nats-server (file store in dir) and
// n synchronous JetStream publishers.
func publishJetStream(ctx context.Context, dir string, syncAlways bool, n int, d time.Duration, payload []byte) (Result, error) {
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
	js, err := jetstream.New(nc)
	if err != nil {
		return Result{}, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage}); err != nil {
		return Result{}, err
	}
	cnt, el, lat, err := drive(ctx, n, d, func(ctx context.Context, w, seq int) error {
		_, err := js.Publish(ctx, "bench."+strconv.Itoa(w%8), payload)
		return err
	})
	if err != nil {
		return Result{}, err
	}
	res := Result{Scenario: "publish", Concurrency: n, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el)}
	res.percentiles(lat)
	return res, nil
}
