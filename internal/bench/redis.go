package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

const redisSystem = "redis streams (appendfsync always)"

// redisServer is a redis-server this run started: its own process on a
// free loopback port, its data directory on the bench disk.
type redisServer struct {
	cmd    *exec.Cmd
	addr   string
	log    *bytes.Buffer
	exited chan error
}

// startRedis starts redis-server with appendonly yes and appendfsync
// always (each write is fsynced before its reply is sent), no RDB
// snapshots, data under dir. It never touches the machine's shared
// instance: the port is a free one chosen here, never 6379.
func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, unavailable(redisSystem, fmt.Errorf("no redis-server binary on PATH: %w", err))
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis data dir: %w", err)
	}
	rs := &redisServer{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: new(bytes.Buffer), exited: make(chan error, 1)}
	rs.cmd = exec.CommandContext(ctx, bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--logfile", "")
	rs.cmd.Stdout, rs.cmd.Stderr = rs.log, rs.log
	if err := rs.cmd.Start(); err != nil {
		return nil, unavailable(redisSystem, fmt.Errorf("starting %s: %w", bin, err))
	}
	go func() { rs.exited <- rs.cmd.Wait() }()
	c := rs.client(1)
	defer c.Close()
	err = waitFor(ctx, 10*time.Second, func() (bool, error) {
		select {
		case err := <-rs.exited:
			return false, fmt.Errorf("redis-server exited (%v): %s", err, strings.TrimSpace(rs.log.String()))
		default:
		}
		return c.Ping(ctx).Err() == nil, nil
	})
	if err != nil {
		rs.stop()
		return nil, unavailable(redisSystem, fmt.Errorf("redis-server on %s did not answer: %w", rs.addr, err))
	}
	for _, kv := range [][2]string{{"appendonly", "yes"}, {"appendfsync", "always"}} {
		got, err := c.ConfigGet(ctx, kv[0]).Result()
		if err != nil || got[kv[0]] != kv[1] {
			rs.stop()
			return nil, fmt.Errorf("redis-server: config %s is %q, want %q (%v)", kv[0], got[kv[0]], kv[1], err)
		}
	}
	return rs, nil
}

// client is a client of the server with a pool of n connections.
func (rs *redisServer) client(n int) *redis.Client {
	return redis.NewClient(&redis.Options{Addr: rs.addr, PoolSize: n, MinIdleConns: 0, DisableIdentity: true, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
}

// stop shuts the server down (it was started here) and waits for it.
func (rs *redisServer) stop() {
	if rs.cmd.Process == nil {
		return
	}
	_ = rs.cmd.Process.Signal(os.Interrupt)
	select {
	case <-rs.exited:
	case <-time.After(10 * time.Second):
		_ = rs.cmd.Process.Kill()
		<-rs.exited
	}
}

// freePort is a loopback TCP port nothing listens on now (and never 6379,
// the machine's shared Redis).
func freePort() (int, error) {
	for range 10 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("free port: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if port != 6379 {
			return port, nil
		}
	}
	return 0, errors.New("free port: none found")
}

// redisScenario publishes to a Redis stream from peerPublishers
// connections, each pipelining peerWindow XADDs per round trip, for
// publishFor, then drains the stream with a consumer group
// (XREADGROUP/XACK); ferry's reference is measured beside it.
func (p *peerRun) redisScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	rs, err := startRedis(ctx, filepath.Join(dir, "redis"))
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	ref, out, err := p.reference(ctx, dir, s)
	if err != nil {
		return out, err
	}
	c := rs.client(peerPublishers + 8)
	defer c.Close()
	const stream, group = "bench", "bench"
	if err := c.XGroupCreateMkStream(ctx, stream, group, "0").Err(); err != nil {
		return out, fmt.Errorf("redis: XGROUP CREATE: %w", err)
	}
	payload := make([]byte, payloadSize)
	settle()
	cnt, el, lat, err := drivePipelined(ctx, peerPublishers, peerWindow, s.publishFor, func(ctx context.Context, w int) error {
		pipe := c.Pipeline()
		for range peerWindow {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"p", payload}})
		}
		_, err := pipe.Exec(ctx)
		return err
	})
	if err != nil {
		return out, fmt.Errorf("redis: XADD: %w", err)
	}
	pub := Result{Scenario: "peer-publish", System: redisSystem, FsyncAck: "yes", Concurrency: peerPublishers, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
		MBPerSec: mbPerSec(int64(cnt)*payloadSize, el),
		Note:     fmt.Sprintf("redis-server %s started by the bench, AOF on the bench disk; %d connections, each pipelining %d XADDs per round trip", redisVersion(ctx, c), peerPublishers, peerWindow)}
	pub.percentiles(lat)
	compare(&pub, ref.publish)
	out = append(out, pub)

	lat1, err := pacedLatency(ctx, s, redisSystem+" XADD", "yes", func(_ int, done func(error)) {
		go func() {
			done(c.XAdd(ctx, &redis.XAddArgs{Stream: stream + "-latency", Values: []any{"p", payload}}).Err())
		}()
	})
	if err != nil {
		return out, fmt.Errorf("redis: latency: %w", err)
	}
	compareLatency(&lat1, ref.latency)
	out = append(out, lat1)

	const consumers, count = 8, 256
	settle()
	var got atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	start := time.Now()
	for i := range consumers {
		wg.Go(func() {
			name := "c" + strconv.Itoa(i)
			for got.Load() < int64(cnt) && failed.Load() == nil {
				res, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: name, Streams: []string{stream, ">"}, Count: count, Block: 100 * time.Millisecond}).Result()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
				for _, st := range res {
					if len(st.Messages) == 0 {
						continue
					}
					ids := make([]string, len(st.Messages))
					for j, m := range st.Messages {
						ids[j] = m.ID
					}
					if err := c.XAck(ctx, stream, group, ids...).Err(); err != nil {
						failed.CompareAndSwap(nil, &err)
						return
					}
					got.Add(int64(len(ids)))
				}
			}
		})
	}
	wg.Wait()
	cel := time.Since(start)
	if e := failed.Load(); e != nil {
		return out, fmt.Errorf("redis: XREADGROUP/XACK: %w", *e)
	}
	cons := Result{Scenario: "peer-consume", System: redisSystem, Concurrency: consumers, Messages: int(got.Load()), Seconds: cel.Seconds(), MsgsPerSec: rate(int(got.Load()), cel),
		Note: fmt.Sprintf("%d consumers of one group, XREADGROUP COUNT %d, one XACK per batch read", consumers, count)}
	compare(&cons, ref.consume)
	return append(out, cons), nil
}

// redisVersion is the server's version, as INFO gives it.
func redisVersion(ctx context.Context, c *redis.Client) string {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return "(version unknown)"
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
			return v
		}
	}
	return "(version unknown)"
}

// drivePipelined runs n publishers for d, each sending batches of window
// messages in one round trip with send, and measures each message from
// its batch's start to the batch's replies.
func drivePipelined(ctx context.Context, n, window int, d time.Duration, send func(ctx context.Context, worker int) error) (int, time.Duration, []time.Duration, error) {
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		mu       sync.Mutex
		all      []time.Duration
		firstErr error
	)
	start := time.Now()
	for w := range n {
		wg.Go(func() {
			var mine []time.Duration
			for !stop.Load() {
				t := time.Now()
				if err := send(ctx, w); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					stop.Store(true)
					break
				}
				lat := time.Since(t)
				for range window {
					mine = append(mine, lat)
				}
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		})
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	return len(all), time.Since(start), all, firstErr
}
