package bench

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
)

// The durable peers (Redis Streams, RabbitMQ quorum queues and streams)
// are driven like ferry's reference: peerPublishers publishers, each with
// up to peerWindow publishes in flight, for the sizes' publishFor, then a
// consumer drains what was published.
const peerPublishers, peerWindow = 64, 16

// Unavailable is a peer that a run could not measure, and why.
type Unavailable struct {
	Scenario string `json:"scenario"`
	System   string `json:"system"`
	Reason   string `json:"reason"`
}

// unavailableError says a peer cannot be measured on this machine (its
// service is down, its binary or plugin is missing): the run reports it
// and goes on with the other scenarios.
type unavailableError struct {
	system string
	err    error
}

func (e *unavailableError) Error() string { return e.system + " unavailable: " + e.err.Error() }

func (e *unavailableError) Unwrap() error { return e.err }

// unavailable wraps err as system's unavailability.
func unavailable(system string, err error) error {
	return &unavailableError{system: system, err: err}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// Scenarios are the names --only takes, in the order a run takes them;
// "peers" stands for every external peer (redis, rabbitmq,
// rabbitmq-stream, river).
var Scenarios = []string{"publish", "publish-pipelined", "append-vs-disk", "consume", "latency", "router", "serve",
	"redis", "rabbitmq", "rabbitmq-stream", "river"}

// peerScenarios are what "peers" stands for in --only.
var peerScenarios = []string{"redis", "rabbitmq", "rabbitmq-stream", "river"}

// peerRun holds what the peer scenarios of one run share: ferry's
// reference lines, measured once, by the first peer scenario that runs,
// on the same disk and with the same publishers, window and payload.
type peerRun struct {
	rabbitURL, postgresDSN string
	ref                    *ferryRef
}

// ferryRef is ferry's reference for the durable peers: the published
// rate, the runtime's no-op consumption of what was published, and the
// acknowledgement latency at the latency scenario's offered rate.
type ferryRef struct {
	publish, consume, latency Result
}

// reference returns ferry's reference, measuring it the first time, and
// the lines to print with it (only the first time).
func (p *peerRun) reference(ctx context.Context, dir string, s sizes) (*ferryRef, []Result, error) {
	if p.ref != nil {
		return p.ref, nil, nil
	}
	payload := make([]byte, payloadSize)
	l, err := openLog(ctx, filepath.Join(dir, "ferry-peer-ref"), "in")
	if err != nil {
		return nil, nil, fmt.Errorf("ferry reference: %w", err)
	}
	defer l.Close()
	settle()
	cnt, el, lat, err := driveAsync(ctx, peerPublishers, peerWindow, s.publishFor, func(ctx context.Context, w, seq int, done func(error)) {
		l.AppendAsync(ctx, func(_ *commitlog.Batch, err error) { done(err) }, &ferry.Message{Topic: "in", Key: []byte(strconv.Itoa(w)), Payload: payload})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ferry reference: publish: %w", err)
	}
	pub := Result{Scenario: "peer-publish", System: "ferry AppendAsync", FsyncAck: "yes", Concurrency: peerPublishers, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el),
		MBPerSec: mbPerSec(int64(cnt)*payloadSize, el),
		Note:     fmt.Sprintf("the reference of the peer lines: %d publishers × %d in flight, 256-byte messages, one topic of 8 partitions on the bench disk", peerPublishers, peerWindow)}
	pub.percentiles(lat)
	b := embedded.New(l)
	defer b.Close()
	settle()
	cel, err := consumeAll(ctx, b, cnt, func() {})
	if err != nil {
		return nil, nil, fmt.Errorf("ferry reference: consume: %w", err)
	}
	cons := Result{Scenario: "peer-consume", System: "ferry runtime, no-op handler", Concurrency: 64, Messages: cnt, Seconds: cel.Seconds(), MsgsPerSec: rate(cnt, cel),
		Note: "what peer-publish wrote, from the durable log on disk; 64 lanes, offsets committed every 100 ms"}
	ackLat, err := pacedLatency(ctx, s, "ferry AppendAsync", "yes", func(_ int, done func(error)) {
		l.AppendAsync(ctx, func(_ *commitlog.Batch, err error) { done(err) }, &ferry.Message{Topic: "in", Payload: payload})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("ferry reference: latency: %w", err)
	}
	ackLat.Note = "the reference of the peer-latency lines; " + ackLat.Note
	p.ref = &ferryRef{publish: pub, consume: cons, latency: ackLat}
	return p.ref, []Result{pub, cons, ackLat}, nil
}

// pacedLatency measures system's acknowledgement latency at the latency
// scenario's offered rate, one message a send, each sent at its time
// whatever the acknowledgements before it (an open loop: a system that
// falls behind shows it in its percentiles, and the note says so).
func pacedLatency(ctx context.Context, s sizes, system, fsyncAck string, send func(i int, done func(error))) (Result, error) {
	total := int(float64(s.latencyRate) * s.latencyFor.Seconds())
	settle()
	start := time.Now()
	lat, sending, err := pacedSend(ctx, s.latencyRate, total, send)
	if err != nil {
		return Result{}, err
	}
	res := pacedResult(total, time.Since(start), sending, lat)
	res.Scenario, res.System, res.FsyncAck = "peer-latency", fmt.Sprintf("%s ack at %d msg/s offered", system, s.latencyRate), fsyncAck
	return res, nil
}

// compareLatency sets x's ratio and note against ferry's latency line
// ref: the ratio is x's p99 over ferry's (above 1, ferry's is lower).
func compareLatency(x *Result, ref Result) {
	if x.P99Ms <= 0 || ref.P99Ms <= 0 {
		return
	}
	x.Ratio = x.P99Ms / ref.P99Ms
	x.Note += fmt.Sprintf("; p99 %.2fx ferry's (%.2f ms)", x.Ratio, ref.P99Ms)
}

// compare sets x's ratio and note against ferry's line ref.
func compare(x *Result, ref Result) {
	if x.MsgsPerSec <= 0 {
		return
	}
	x.Ratio = ref.MsgsPerSec / x.MsgsPerSec
	note := fmt.Sprintf("ferry (%s) is %.2fx this", ref.System, x.Ratio)
	if x.Note != "" {
		note = x.Note + "; " + note
	}
	x.Note = note
}

// waitFor polls cond every 10 ms until it holds, or d passes.
func waitFor(ctx context.Context, d time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
