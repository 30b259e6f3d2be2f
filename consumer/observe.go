package consumer

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ferrymq/ferry/backend"
)

// PartitionStat is what a consumer holds of one assigned partition.
type PartitionStat struct {
	backend.TopicPartition
	Committed uint64 // last committed offset (the next to process after a restart)
	Watermark uint64 // first unfinished offset
	Next      uint64 // fetch position
	Buffered  int    // fetched, not finished
}

// PartitionStats returns a snapshot per assigned partition (for lag: a
// partition's end minus Committed).
func (c *Consumer) PartitionStats() []PartitionStat {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]PartitionStat, 0, len(c.workers))
	for tp, w := range c.workers {
		w.mu.Lock()
		out = append(out, PartitionStat{TopicPartition: tp, Committed: w.committed, Watermark: w.watermarkLocked(), Next: w.next, Buffered: w.buffered})
		w.mu.Unlock()
	}
	return out
}

// ErrNotRunning: the consumer's Run is not running (not started, or ended).
var ErrNotRunning = errors.New("consumer: not running")

// Healthy reports whether the consumer is running with a live group
// session and, with a circuit breaker, whether the breaker lets calls
// through (an open breaker means a dependency is down: not ready).
func (c *Consumer) Healthy() error {
	if !c.running.Load() {
		return ErrNotRunning
	}
	if last := time.Unix(0, c.lastBeat.Load()); time.Since(last) > 3*c.cfg.heartbeat+time.Second {
		return fmt.Errorf("consumer: member %s of %q: no heartbeat for %v", c.cfg.member, c.group, time.Since(last).Round(time.Millisecond))
	}
	if c.breaker != nil && c.breaker.State() == "open" {
		return fmt.Errorf("consumer: circuit breaker of %q is open: its dependency is failing", c.cfg.handlerName)
	}
	return nil
}

// EventStream delivers a consumer's lifecycle events on a channel, for
// subscribers that must never slow the pipeline: when the buffer is full,
// events are dropped and counted. Pass Observe to WithObserver.
type EventStream struct {
	ch      chan Event
	dropped atomic.Uint64
}

// NewEventStream returns a stream buffering up to size events.
func NewEventStream(size int) *EventStream {
	return &EventStream{ch: make(chan Event, max(size, 1))}
}

// Observe is the observer to give WithObserver; it never blocks.
func (s *EventStream) Observe(e Event) {
	select {
	case s.ch <- e:
	default:
		s.dropped.Add(1)
	}
}

// Events returns the channel of events.
func (s *EventStream) Events() <-chan Event { return s.ch }

// Dropped returns how many events were dropped because the buffer was full.
func (s *EventStream) Dropped() uint64 { return s.dropped.Load() }

// Observers combines observers into one, called in order.
func Observers(fns ...func(Event)) func(Event) {
	return func(e Event) {
		for _, fn := range fns {
			fn(e)
		}
	}
}
