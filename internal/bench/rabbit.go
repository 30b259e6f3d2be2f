package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultRabbitMQURL is the machine's RabbitMQ (guest/guest on loopback).
const DefaultRabbitMQURL = "amqp://guest:guest@127.0.0.1:5672/"

// rabbitKind is one RabbitMQ queue type the bench measures.
type rabbitKind struct {
	system   string // the line's system
	queue    string // x-queue-type
	fsyncAck bool   // confirmed only after an fsync
	note     string
}

var (
	rabbitQuorum = rabbitKind{system: "rabbitmq quorum queue (publisher confirms)", queue: "quorum", fsyncAck: true,
		note: "a quorum queue confirms once its Raft log entry is fsynced (one node here)"}
	rabbitStream = rabbitKind{system: "rabbitmq stream queue over AMQP (publisher confirms)", queue: "stream", fsyncAck: false,
		note: "a stream confirms once written (to the page cache) on a quorum of replicas, one node here: RabbitMQ does not fsync stream writes before confirming"}
)

func (p *peerRun) rabbitQuorumScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	return p.rabbitScenario(ctx, dir, s, rabbitQuorum)
}

func (p *peerRun) rabbitStreamScenario(ctx context.Context, dir string, s sizes) ([]Result, error) {
	return p.rabbitScenario(ctx, dir, s, rabbitStream)
}

// rabbitScenario declares a fresh, uniquely named durable queue of kind's
// type on the machine's RabbitMQ, publishes 256-byte persistent messages
// from peerPublishers connections, each with publisher confirms and up to
// peerWindow publishes unconfirmed, for publishFor, then consumes them
// with manual acks and deletes the queue. The broker's data directory is
// the machine's (/var/lib/rabbitmq), not the bench's --dir.
func (p *peerRun) rabbitScenario(ctx context.Context, dir string, s sizes, kind rabbitKind) ([]Result, error) {
	admin, err := amqp.Dial(p.rabbitURL)
	if err != nil {
		return nil, unavailable(kind.system, fmt.Errorf("connecting to RabbitMQ: %w", err))
	}
	defer admin.Close()
	ach, err := admin.Channel()
	if err != nil {
		return nil, unavailable(kind.system, fmt.Errorf("opening a channel: %w", err))
	}
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	queue := fmt.Sprintf("ferry-bench-%s-%d-%s", kind.queue, time.Now().UnixNano(), hex.EncodeToString(suffix[:]))
	if _, err := ach.QueueDeclare(queue, true, false, false, false, amqp.Table{"x-queue-type": kind.queue}); err != nil {
		return nil, unavailable(kind.system, fmt.Errorf("declaring a %s queue: %w", kind.queue, err))
	}
	defer func() {
		// The declaring channel may have been closed by an error: delete
		// the queue on a channel of its own.
		ch, err := admin.Channel()
		if err == nil {
			_, err = ch.QueueDelete(queue, false, false, false)
			ch.Close()
		}
		if err != nil {
			slog.Warn("bench: deleting the RabbitMQ queue", "queue", queue, "err", err)
		}
	}()
	ach.Close()
	version := "?"
	if v, ok := admin.Properties["version"].(string); ok {
		version = v
	}

	ref, out, err := p.reference(ctx, dir, s)
	if err != nil {
		return out, err
	}
	pub, err := rabbitPublish(ctx, p.rabbitURL, queue, s.publishFor)
	if err != nil {
		return out, fmt.Errorf("rabbitmq %s: publish: %w", kind.queue, err)
	}
	pub.System, pub.FsyncAck = kind.system, yesNo(kind.fsyncAck)
	pub.Note = fmt.Sprintf("RabbitMQ %s, fresh queue %s; %s; %d connections, each with up to %d unconfirmed persistent publishes", version, queue, kind.note, peerPublishers, peerWindow)
	compare(&pub, ref.publish)
	out = append(out, pub)

	lat, err := rabbitLatency(ctx, p.rabbitURL, queue, s, kind)
	if err != nil {
		return out, fmt.Errorf("rabbitmq %s: latency: %w", kind.queue, err)
	}
	compareLatency(&lat, ref.latency)
	out = append(out, lat)

	settle()
	cons, err := rabbitConsume(ctx, p.rabbitURL, queue, kind, pub.Messages+lat.Messages)
	if err != nil {
		return out, fmt.Errorf("rabbitmq %s: consume: %w", kind.queue, err)
	}
	cons.System = kind.system
	compare(&cons, ref.consume)
	return append(out, cons), nil
}

// rabbitPublish runs the publishers into queue for d.
func rabbitPublish(ctx context.Context, url, queue string, d time.Duration) (Result, error) {
	chs := make([]*amqp.Channel, peerPublishers)
	waits := make([]chan pendingConfirm, peerPublishers)
	var waiters sync.WaitGroup
	defer func() {
		for _, w := range waits {
			if w != nil {
				close(w)
			}
		}
		waiters.Wait()
	}()
	for w := range peerPublishers {
		conn, err := amqp.Dial(url)
		if err != nil {
			return Result{}, fmt.Errorf("connecting publisher %d: %w", w, err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return Result{}, fmt.Errorf("publisher %d: channel: %w", w, err)
		}
		if err := ch.Confirm(false); err != nil {
			return Result{}, fmt.Errorf("publisher %d: confirm mode: %w", w, err)
		}
		chs[w], waits[w] = ch, make(chan pendingConfirm, peerWindow)
		wg := waits[w]
		waiters.Go(func() {
			for p := range wg {
				p.wait(ctx)
			}
		})
	}
	payload := make([]byte, payloadSize)
	settle()
	cnt, el, lat, err := driveAsync(ctx, peerPublishers, peerWindow, d, func(ctx context.Context, w, _ int, done func(error)) {
		c, err := chs[w].PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/octet-stream", Body: payload})
		if err != nil {
			done(err)
			return
		}
		waits[w] <- pendingConfirm{c, done}
	})
	res := Result{Scenario: "peer-publish", Concurrency: peerPublishers, Messages: cnt, Seconds: el.Seconds(), MsgsPerSec: rate(cnt, el), MBPerSec: mbPerSec(int64(cnt)*payloadSize, el)}
	res.percentiles(lat)
	return res, err
}

// rabbitLatency publishes into queue at the latency scenario's offered
// rate on one channel in confirm mode and measures each confirm. The
// broker confirms a channel's publishes in order, so one goroutine waits
// for them in turn.
func rabbitLatency(ctx context.Context, url, queue string, s sizes, kind rabbitKind) (Result, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return Result{}, fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return Result{}, fmt.Errorf("channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		return Result{}, fmt.Errorf("confirm mode: %w", err)
	}
	pending := make(chan pendingConfirm, 1<<16)
	var waiter sync.WaitGroup
	waiter.Go(func() {
		for p := range pending {
			p.wait(ctx)
		}
	})
	defer waiter.Wait()
	defer close(pending)
	payload := make([]byte, payloadSize)
	res, err := pacedLatency(ctx, s, kind.system+" publish", yesNo(kind.fsyncAck), func(_ int, done func(error)) {
		c, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/octet-stream", Body: payload})
		if err != nil {
			done(err)
			return
		}
		pending <- pendingConfirm{c, done}
	})
	if err == nil {
		res.Note = "one channel with publisher confirms; " + res.Note
	}
	return res, err
}

// pendingConfirm is one publish waiting for its confirm.
type pendingConfirm struct {
	c    *amqp.DeferredConfirmation
	done func(error)
}

// wait waits for the confirm and reports it.
func (p pendingConfirm) wait(ctx context.Context) {
	if ok, err := p.c.WaitContext(ctx); err != nil {
		p.done(err)
	} else if !ok {
		p.done(errors.New("publish nacked by the broker"))
	} else {
		p.done(nil)
	}
}

// rabbitConsumers and rabbitPrefetch shape the consumers: each on its own
// channel, acknowledging every delivery on its own (manual acks).
const rabbitConsumers, rabbitPrefetch = 4, 256

// rabbitConsume consumes n messages of queue with rabbitConsumers
// consumers (one for a stream) on a connection of their own, each
// acknowledging every delivery; it cancels each consumer (synchronously)
// before closing its channel.
func rabbitConsume(ctx context.Context, url, queue string, kind rabbitKind, n int) (Result, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return Result{}, fmt.Errorf("connecting the consumers: %w", err)
	}
	defer conn.Close()
	var got atomic.Int64
	all := make(chan struct{})
	var closeAll sync.Once
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	consumers := rabbitConsumers
	if kind.queue == "stream" {
		// A stream is read, not emptied: every consumer would read it
		// all, so one consumer reads it once.
		consumers = 1
	}
	type sub struct {
		ch  *amqp.Channel
		tag string
	}
	var subs []sub
	defer func() {
		for _, s := range subs {
			if err := s.ch.Cancel(s.tag, false); err != nil {
				slog.Warn("bench: cancelling a RabbitMQ consumer", "tag", s.tag, "err", err)
			}
		}
		wg.Wait()
		for _, s := range subs {
			s.ch.Close()
		}
	}()
	start := time.Now()
	for i := range consumers {
		ch, err := conn.Channel()
		if err != nil {
			return Result{}, fmt.Errorf("consumer channel: %w", err)
		}
		if err := ch.Qos(rabbitPrefetch, 0, false); err != nil {
			ch.Close()
			return Result{}, fmt.Errorf("consumer prefetch: %w", err)
		}
		var args amqp.Table
		if kind.queue == "stream" {
			args = amqp.Table{"x-stream-offset": "first"}
		}
		tag := fmt.Sprintf("ferry-bench-%d", i)
		deliveries, err := ch.Consume(queue, tag, false, false, false, false, args)
		if err != nil {
			ch.Close()
			return Result{}, fmt.Errorf("consume: %w", err)
		}
		subs = append(subs, sub{ch, tag})
		wg.Go(func() {
			for d := range deliveries {
				if err := d.Ack(false); err != nil {
					failed.CompareAndSwap(nil, &err)
					closeAll.Do(func() { close(all) })
					return
				}
				if got.Add(1) == int64(n) {
					closeAll.Do(func() { close(all) })
				}
			}
		})
	}
	select {
	case <-all:
	case <-ctx.Done():
		return Result{}, ctx.Err()
	case <-time.After(10 * time.Minute):
		return Result{}, fmt.Errorf("consumed %d of %d in 10 minutes", got.Load(), n)
	}
	el := time.Since(start)
	if e := failed.Load(); e != nil {
		return Result{}, fmt.Errorf("ack: %w", *e)
	}
	note := fmt.Sprintf("%d consumers, each on its own channel, prefetch %d, every delivery acknowledged on its own", consumers, rabbitPrefetch)
	if kind.queue == "stream" {
		note = fmt.Sprintf("one consumer from the first offset (a stream is read, not emptied), prefetch %d, every delivery acknowledged on its own", rabbitPrefetch)
	}
	return Result{Scenario: "peer-consume", Concurrency: consumers, Messages: n, Seconds: el.Seconds(), MsgsPerSec: rate(n, el), Note: note}, nil
}
