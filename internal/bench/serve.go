package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/commitlog"
)

// serveProducers is how many Kafka producers (each its own franz-go client
// and connection) or JetStream publishers (each its own NATS connection)
// the serve scenario runs. Each keeps up to the sizes' serveWindow records
// unacknowledged (4096 in a full run: about JetStream's default of 4000
// asynchronous publishes pending per connection, and under franz-go's
// default buffer of 50,000 records).
const serveProducers = 8

// serveScenario is ferry serve (package broker over a durable commitlog,
// in this process, on a loopback port) driven by franz-go with its
// defaults (acks=all, idempotent, 10 ms linger, snappy), next to an
// in-process JetStream file store driven by nats.go's PublishAsync:
//
//   - serve-produce: serveProducers producers × 8 partitions (subjects),
//     each keeping up to serveWindow records in flight, for publishFor;
//   - serve-latency: one producer at a fixed offered rate, ack latency;
//   - serve-backlog: a backlog of serveBacklog records produced through
//     the broker, and the process's RSS and Go heap growth it leaves;
//   - serve-consume: a franz-go consumer reading that backlog from the
//     start.
//
// Payloads are random (distinct per record), so that snappy, on by default
// in franz-go, does not shrink what the broker and the disk see.
func serveScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	pool, err := newPayloadPool()
	if err != nil {
		return nil, err
	}
	var out []Result

	// Produce throughput.
	ferryRes, err := serveProduce(ctx, filepath.Join(dir, "serve-produce"), s.publishFor, s.serveWindow, pool)
	if err != nil {
		return nil, err
	}
	out = append(out, ferryRes)
	for _, mode := range []struct {
		name string
		sync bool
	}{{"jetstream PublishAsync (default: fsync every 2 min)", false}, {"jetstream PublishAsync (sync_always)", true}} {
		settle()
		res, err := jetStreamProduce(ctx, filepath.Join(dir, fmt.Sprintf("serve-js-%v", mode.sync)), mode.sync, s.publishFor, s.serveWindow, pool)
		if err != nil {
			return nil, err
		}
		res.System, res.FsyncAck = mode.name, yesNo(mode.sync)
		res.Ratio = ferryRes.MsgsPerSec / res.MsgsPerSec
		res.Note = fmt.Sprintf("ferry serve is %.2fx this", res.Ratio)
		out = append(out, res)
	}

	// Latency at a fixed offered rate.
	total := int(float64(s.serveLatencyRate) * s.serveLatencyFor.Seconds())
	offered := fmt.Sprintf("at %d msg/s offered", s.serveLatencyRate)
	for _, linger := range []struct {
		name string
		opts []kgo.Opt
	}{{"franz-go default linger (10 ms)", nil}, {"franz-go linger 0", []kgo.Opt{kgo.ProducerLinger(0)}}} {
		settle()
		res, err := serveLatency(ctx, filepath.Join(dir, "serve-latency-"+strconv.Itoa(len(linger.opts))), s.serveLatencyRate, total, pool, linger.opts...)
		if err != nil {
			return nil, err
		}
		res.System, res.FsyncAck = "ferry serve ack "+offered+", "+linger.name, "yes"
		out = append(out, res)
	}
	settle()
	jsLat, err := jetStreamLatency(ctx, filepath.Join(dir, "serve-js-latency"), s.serveLatencyRate, total, pool)
	if err != nil {
		return nil, err
	}
	jsLat.System, jsLat.FsyncAck = "jetstream PublishAsync (sync_always) ack "+offered, "yes"
	out = append(out, jsLat)

	// Backlog: memory, then consumption.
	settle()
	backlog, err := serveBacklog(ctx, filepath.Join(dir, "serve-backlog"), s.serveBacklog, s.serveWindow, pool)
	if err != nil {
		return nil, err
	}
	return append(out, backlog...), nil
}

// payloadPool is random bytes records take their payloads from: distinct
// for the 64 KiB a snappy block spans, and never compressible.
type payloadPool []byte

func newPayloadPool() (payloadPool, error) {
	p := make([]byte, 4<<20)
	if _, err := rand.Read(p); err != nil {
		return nil, fmt.Errorf("random payloads: %w", err)
	}
	return p, nil
}

// get is the payload of producer w's seq-th record.
func (p payloadPool) get(w, seq int) []byte {
	n := len(p) / payloadSize
	i := (w*7919 + seq) % n
	return p[i*payloadSize : (i+1)*payloadSize]
}

// served is ferry serve in this process: a broker on a loopback port over
// a durable log (fsync before ack) with topics of 8 partitions.
type served struct {
	log  *commitlog.Log
	srv  *broker.Server
	addr string
	done chan error
}

func startServed(ctx context.Context, path string, topics ...string) (*served, error) {
	l, err := openLog(ctx, path, topics...)
	if err != nil {
		return nil, err
	}
	srv, err := broker.New(l)
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		l.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	sv := &served{log: l, srv: srv, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { sv.done <- srv.Serve(context.WithoutCancel(ctx), ln) }()
	return sv, nil
}

// close closes the broker, then the log.
func (sv *served) close() error {
	sv.srv.Close()
	err := <-sv.done
	if cerr := sv.log.Close(); err == nil {
		err = cerr
	}
	return err
}

// client is a franz-go client of the broker with the client's defaults
// (acks=all, idempotent, 10 ms linger, snappy) and topic as its default.
func (sv *served) client(topic string, opts ...kgo.Opt) (*kgo.Client, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(sv.addr), kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks())}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("franz-go client: %w", err)
	}
	return cl, nil
}

// producers returns n warmed-up clients of the broker: each has produced
// one record (metadata, producer ID and connection are in place).
func (sv *served) producers(ctx context.Context, n int, topic string, opts ...kgo.Opt) ([]*kgo.Client, error) {
	cls := make([]*kgo.Client, 0, n)
	for range n {
		cl, err := sv.client(topic, opts...)
		if err == nil {
			err = cl.ProduceSync(ctx, &kgo.Record{Value: []byte("warm-up")}).FirstErr()
		}
		if err != nil {
			closeAll(cls)
			if cl != nil {
				cl.Close()
			}
			return nil, fmt.Errorf("warming up a producer: %w", err)
		}
		cls = append(cls, cl)
	}
	return cls, nil
}

func closeAll(cls []*kgo.Client) {
	for _, cl := range cls {
		cl.Close()
	}
}

// serveProduce runs serveProducers franz-go producers into ferry serve
// for d, each with up to window records in flight.
func serveProduce(ctx context.Context, path string, d time.Duration, window int, pool payloadPool) (Result, error) {
	sv, err := startServed(ctx, path, "bench")
	if err != nil {
		return Result{}, err
	}
	defer sv.close()
	cls, err := sv.producers(ctx, serveProducers, "bench")
	if err != nil {
		return Result{}, err
	}
	defer closeAll(cls)
	settle()
	cnt, el, lat, err := driveAsync(ctx, serveProducers, window, d, func(ctx context.Context, w, seq int, done func(error)) {
		cls[w].Produce(ctx, &kgo.Record{Value: pool.get(w, seq)}, func(_ *kgo.Record, err error) { done(err) })
	})
	if err != nil {
		return Result{}, fmt.Errorf("ferry serve: produce: %w", err)
	}
	res := Result{Scenario: "serve-produce", System: "ferry serve, franz-go producers (fsync before ack)", FsyncAck: "yes", Concurrency: serveProducers, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
		MBPerSec: mbPerSec(int64(cnt)*payloadSize, el),
		Note:     fmt.Sprintf("%d franz-go clients (acks=all, idempotent, default 10 ms linger and snappy), %d records in flight each at most, 8 partitions, random 256-byte values", serveProducers, window)}
	res.percentiles(lat)
	return res, nil
}

// jsConn is one NATS connection and its JetStream context, which allows
// maxPending asynchronous publishes in flight.
func jsConn(url string, maxPending int) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return nil, nil, fmt.Errorf("nats connect: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending))
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// asyncAcks waits for the acknowledgements of one connection's
// asynchronous publishes in the order they were published (JetStream
// acknowledges one stream's publishes in order) and calls each one's done:
// one goroutine per publisher, not one per publish.
type asyncAcks chan pendingAck

type pendingAck struct {
	f    jetstream.PubAckFuture
	done func(error)
}

func (a asyncAcks) run() {
	for p := range a {
		select {
		case <-p.f.Ok():
			p.done(nil)
		case err := <-p.f.Err():
			p.done(err)
		}
	}
}

// publish publishes payload to subject asynchronously and has done called
// with its acknowledgement.
func (a asyncAcks) publish(js jetstream.JetStream, subject string, payload []byte, done func(error)) {
	f, err := js.PublishAsync(subject, payload)
	if err != nil {
		done(err)
		return
	}
	a <- pendingAck{f, done}
}

// jetStreamProduce runs serveProducers JetStream publishers, each on its
// own connection with up to window PublishAsync in flight, for d.
func jetStreamProduce(ctx context.Context, dir string, syncAlways bool, d time.Duration, window int, pool payloadPool) (Result, error) {
	var res Result
	err := withJetStreamServer(ctx, dir, syncAlways, func(url string) error {
		jss := make([]jetstream.JetStream, serveProducers)
		acks := make([]asyncAcks, serveProducers)
		var wg sync.WaitGroup
		for w := range serveProducers {
			nc, js, err := jsConn(url, window)
			if err != nil {
				return err
			}
			defer nc.Close()
			if _, err := js.Publish(ctx, "bench.0", []byte("warm-up")); err != nil {
				return fmt.Errorf("warming up a publisher: %w", err)
			}
			jss[w], acks[w] = js, make(asyncAcks, window)
			wg.Go(acks[w].run)
		}
		settle()
		cnt, el, lat, err := driveAsync(ctx, serveProducers, window, d, func(ctx context.Context, w, seq int, done func(error)) {
			acks[w].publish(jss[w], "bench."+strconv.Itoa(seq%8), pool.get(w, seq), done)
		})
		for _, a := range acks {
			close(a)
		}
		wg.Wait()
		res = Result{Scenario: "serve-produce", Concurrency: serveProducers, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el), MBPerSec: mbPerSec(int64(cnt)*payloadSize, el)}
		res.percentiles(lat)
		return err
	})
	return res, err
}

// withJetStreamServer runs an in-process nats-server as withJetStream does
// and calls run with its client URL.
func withJetStreamServer(ctx context.Context, dir string, syncAlways bool, run func(url string) error) error {
	var url string
	_, err := withJetStream(ctx, dir, syncAlways, func(js jetstream.JetStream) (Result, error) {
		url = js.Conn().ConnectedUrl()
		return Result{}, run(url)
	})
	if err != nil {
		return fmt.Errorf("jetstream (sync_always %v): %w", syncAlways, err)
	}
	return nil
}

// pacedSend calls send total times at perSec per second in 1 ms ticks and
// returns each call's latency to its acknowledgement, and how long the
// calls took (the acknowledgements may come later).
func pacedSend(ctx context.Context, perSec, total int, send func(i int, done func(error))) ([]time.Duration, time.Duration, error) {
	perTick := max(perSec/1000, 1)
	tick := time.NewTicker(time.Duration(float64(time.Second) * float64(perTick) / float64(perSec)))
	defer tick.Stop()
	var mu sync.Mutex
	acks := make([]time.Duration, 0, total)
	var failed error
	var wg sync.WaitGroup
	wg.Add(total)
	start := time.Now()
	for sent := 0; sent < total; {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
		for range min(perTick, total-sent) {
			t := time.Now()
			send(sent, func(err error) {
				d := time.Since(t)
				mu.Lock()
				if err != nil {
					failed = err
				} else {
					acks = append(acks, d)
				}
				mu.Unlock()
				wg.Done()
			})
			sent++
		}
	}
	sending := time.Since(start)
	wg.Wait()
	return acks, sending, failed
}

// pacedResult is the result line of a paced run of total messages that
// took el, the calls sending, with the acknowledgements' latencies lat.
func pacedResult(total int, el, sending time.Duration, lat []time.Duration) Result {
	res := Result{Scenario: "serve-latency", Concurrency: 1, Messages: total, Seconds: el.Seconds(), MsgsPerSec: rate(total, el)}
	res.percentiles(lat)
	res.Note = fmt.Sprintf("sent over %.2f s, the last acknowledged %.2f s after the last send", sending.Seconds(), (el - sending).Seconds())
	if el-sending > sending/10 {
		res.Note += ": it did not keep up with the offered rate, and its percentiles are mostly queueing"
	}
	return res
}

// serveLatency produces total records into ferry serve from one franz-go
// producer at perSec per second and measures each acknowledgement.
func serveLatency(ctx context.Context, path string, perSec, total int, pool payloadPool, opts ...kgo.Opt) (Result, error) {
	sv, err := startServed(ctx, path, "bench")
	if err != nil {
		return Result{}, err
	}
	defer sv.close()
	cls, err := sv.producers(ctx, 1, "bench", opts...)
	if err != nil {
		return Result{}, err
	}
	defer closeAll(cls)
	settle()
	start := time.Now()
	lat, sending, err := pacedSend(ctx, perSec, total, func(i int, done func(error)) {
		cls[0].Produce(ctx, &kgo.Record{Value: pool.get(0, i)}, func(_ *kgo.Record, err error) { done(err) })
	})
	el := time.Since(start)
	if err != nil {
		return Result{}, fmt.Errorf("ferry serve: paced produce: %w", err)
	}
	return pacedResult(total, el, sending, lat), nil
}

// jetStreamLatency publishes total messages to JetStream with sync_always
// from one connection at perSec per second and measures each
// acknowledgement.
func jetStreamLatency(ctx context.Context, dir string, perSec, total int, pool payloadPool) (Result, error) {
	var res Result
	err := withJetStreamServer(ctx, dir, true, func(url string) error {
		// Pending is not bounded below total: what the server cannot keep
		// up with queues, and shows in the latency.
		nc, js, err := jsConn(url, total+1)
		if err != nil {
			return err
		}
		defer nc.Close()
		if _, err := js.Publish(ctx, "bench.0", []byte("warm-up")); err != nil {
			return fmt.Errorf("warming up a publisher: %w", err)
		}
		acks := make(asyncAcks, total)
		var wg sync.WaitGroup
		wg.Go(acks.run)
		settle()
		start := time.Now()
		lat, sending, err := pacedSend(ctx, perSec, total, func(i int, done func(error)) {
			acks.publish(js, "bench."+strconv.Itoa(i%8), pool.get(0, i), done)
		})
		el := time.Since(start)
		close(acks)
		wg.Wait()
		res = pacedResult(total, el, sending, lat)
		return err
	})
	return res, err
}

// memory is what the process holds: from /proc/self/status (kB there,
// bytes here) and the Go runtime's live heap after the last collection.
type memory struct {
	rss, anon, file, hwm int64
	liveHeap             int64
}

func readMemory() (memory, error) {
	var m memory
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return m, fmt.Errorf("process memory: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.rss = kb << 10
		case "RssAnon":
			m.anon = kb << 10
		case "RssFile":
			m.file = kb << 10
		case "VmHWM":
			m.hwm = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("process memory: %w", err)
	}
	if m.rss == 0 {
		return m, errors.New("process memory: no VmRSS in /proc/self/status")
	}
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindUint64 {
		m.liveHeap = int64(sample[0].Value.Uint64())
	}
	return m, nil
}

// resetPeakRSS resets VmHWM to the current RSS (clear_refs 5); it reports
// whether the kernel allowed it.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// growth describes after against before.
func growth(before, after memory) string {
	return fmt.Sprintf("RSS %+.1f MiB (anon %+.1f, file %+.1f; %.1f → %.1f MiB), Go live heap %+.1f MiB",
		mib(after.rss-before.rss), mib(after.anon-before.anon), mib(after.file-before.file), mib(before.rss), mib(after.rss), mib(after.liveHeap-before.liveHeap))
}

// serveBacklog produces n records through ferry serve from serveProducers
// producers, measures the process's memory before and after (each after a
// collection and sync(2), with the producers closed), then consumes the
// backlog from the start with one franz-go consumer (no group) and
// measures again.
func serveBacklog(ctx context.Context, path string, n, window int, pool payloadPool) ([]Result, error) {
	sv, err := startServed(ctx, path, "in")
	if err != nil {
		return nil, err
	}
	defer sv.close()
	settle()
	before, err := readMemory()
	if err != nil {
		return nil, err
	}
	peakOK := resetPeakRSS()

	cls, err := sv.producers(ctx, serveProducers, "in")
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for w, cl := range cls {
		wg.Go(func() {
			slots := make(chan struct{}, window)
			for seq := w; seq < n; seq += serveProducers {
				slots <- struct{}{}
				cl.Produce(ctx, &kgo.Record{Value: pool.get(w, seq)}, func(_ *kgo.Record, err error) {
					if err != nil {
						failed.CompareAndSwap(nil, &err)
					}
					<-slots
				})
			}
			if err := cl.Flush(ctx); err != nil {
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	closeAll(cls)
	if e := failed.Load(); e != nil {
		return nil, fmt.Errorf("ferry serve: producing the backlog: %w", *e)
	}
	peak, err := readMemory()
	if err != nil {
		return nil, err
	}
	settle()
	after, err := readMemory()
	if err != nil {
		return nil, err
	}
	peakNote := "peak not measured (clear_refs refused)"
	if peakOK {
		peakNote = fmt.Sprintf("peak RSS while producing %+.1f MiB over the start", mib(peak.hwm-before.rss))
	}
	disk := dirBytes(path)
	prod := Result{Scenario: "serve-backlog", System: fmt.Sprintf("ferry serve: %d records produced, %d producers (fsync before ack)", n, serveProducers), FsyncAck: "yes", Concurrency: serveProducers,
		Messages: n, Seconds: el.Seconds(), MsgsPerSec: rate(n, el), MBPerSec: mbPerSec(int64(n)*payloadSize, el),
		RSSGrowthMB: mib(after.rss - before.rss), HeapGrowthMB: mib(after.liveHeap - before.liveHeap),
		Note: fmt.Sprintf("whole process (broker, log, and the closed producers' leftovers), after GC and sync(2): %s; %s; %.0f MiB on disk",
			growth(before, after), peakNote, mib(disk))}

	// Consume the backlog from the start.
	cl, err := sv.client("in", kgo.ConsumeTopics("in"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	// The backlog and each producer's warm-up record.
	want, got := n+serveProducers, 0
	start = time.Now()
	for got < want {
		fs := cl.PollFetches(ctx)
		if errs := fs.Errors(); len(errs) > 0 {
			cl.Close()
			return nil, fmt.Errorf("ferry serve: consuming the backlog: %s/%d: %w", errs[0].Topic, errs[0].Partition, errs[0].Err)
		}
		got += fs.NumRecords()
	}
	el = time.Since(start)
	cl.Close()
	settle()
	consumed, err := readMemory()
	if err != nil {
		return nil, err
	}
	cons := Result{Scenario: "serve-consume", System: "ferry serve, one franz-go consumer (no group) from the start", Concurrency: 1, Messages: got, Seconds: el.Seconds(),
		MsgsPerSec: rate(got, el), MBPerSec: mbPerSec(int64(got)*payloadSize, el),
		RSSGrowthMB: mib(consumed.rss - before.rss), HeapGrowthMB: mib(consumed.liveHeap - before.liveHeap),
		Note: fmt.Sprintf("the backlog of serve-backlog, 8 partitions, franz-go fetch defaults; memory after, against before the backlog: %s", growth(before, consumed))}
	return []Result{prod, cons}, nil
}
