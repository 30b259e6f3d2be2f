package consumer

import (
	"context"
	"strconv"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
)

// Durable retries. A retry whose delay is at least the durable threshold
// (WithDurableRetry) does not wait in memory, where a restart would lose
// the wait and a long one would hold the partition's watermark: the
// message goes to the group's DLQ as class "scheduled" with its due time,
// and its key is parked behind it exactly as behind a dead letter (later
// messages of the key are parked in the DLQ, in order; other keys keep
// flowing). The member owning the source partition redrives the entry, and
// with it the key's parked messages, once it is due; the redriven copy
// carries the attempt count and first failure time in headers, so the
// policy's MaxAttempts and MaxElapsed still hold. Everything is in the DLQ
// topic, so a restart or rebalance loses nothing: the parked set is
// rebuilt from the DLQ and the new owner redrives what is due.

// Headers a scheduled retry's redriven copy carries.
const (
	// HeaderAttempts is how many attempts a message had before it was
	// scheduled for a durable retry; its next attempt is this plus one.
	HeaderAttempts = "ferry-attempts"
	// HeaderFirstFailure is when the message first failed (RFC 3339).
	HeaderFirstFailure = "ferry-first-failure"
)

// WithDurableRetry sets the retry delay from which a retry is scheduled
// through the DLQ instead of waiting in memory (default one minute; 0
// keeps every wait in memory).
func WithDurableRetry(threshold time.Duration) Opt {
	return optFunc(func(c *cfg) { c.durableAfter = threshold })
}

// priorAttempts reads the attempts and first failure a redriven scheduled
// retry carries (zero for a fresh message).
func priorAttempts(m *ferry.Message) (int, time.Time) {
	v, ok := m.Header(HeaderAttempts)
	if !ok {
		return 0, time.Time{}
	}
	n, err := strconv.Atoi(string(v))
	if err != nil || n < 0 {
		return 0, time.Time{}
	}
	var first time.Time
	if f, ok := m.Header(HeaderFirstFailure); ok {
		first, _ = time.Parse(time.RFC3339Nano, string(f))
	}
	return n, first
}

// withAttempts returns a copy of m whose attempt headers say attempts and
// first (replacing earlier values).
func withAttempts(m *ferry.Message, attempts int, first time.Time) *ferry.Message {
	cp := *m
	cp.Headers = nil
	for _, h := range m.Headers {
		if h.Key != HeaderAttempts && h.Key != HeaderFirstFailure {
			cp.Headers = append(cp.Headers, h)
		}
	}
	cp.Headers = append(cp.Headers,
		ferry.Header{Key: HeaderAttempts, Value: []byte(strconv.Itoa(attempts))},
		ferry.Header{Key: HeaderFirstFailure, Value: []byte(first.UTC().Format(time.RFC3339Nano))})
	return &cp
}

// schedule writes m's durable retry, due after delay, and parks its key.
// It returns false if the worker stopped first (m will be redelivered).
func (w *worker) schedule(m *ferry.Message, f failure, delay time.Duration) bool {
	due := f.last.Add(delay)
	f.retryAt = due
	f.why = "retry scheduled for " + due.UTC().Format(time.RFC3339) + " (" + string(f.class) + "): waits this long are kept in the DLQ"
	if !w.writeDeadLetter(withAttempts(m, f.attempts, f.first), f) {
		return false
	}
	w.park(m)
	w.c.emit(Event{Kind: EventScheduled, Message: m, Attempt: f.attempts, Err: f.err, Class: f.class, Delay: delay})
	w.c.kickRetries()
	return true
}

// kickRetries makes the retry loop rescan the DLQ now.
func (c *Consumer) kickRetries() {
	select {
	case c.rescan <- struct{}{}:
	default:
	}
}

// owns reports whether this consumer runs partition tp now.
func (c *Consumer) owns(tp backend.TopicPartition) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.workers[tp] != nil
}

// maxRescan bounds how long the retry loop goes without reading the DLQ
// (entries scheduled by other members become this member's to redrive
// when their partitions move here).
const maxRescan = 30 * time.Second

// retryLoop redrives the scheduled retries that are due on partitions this
// consumer owns, sleeping until the next one is due.
func (c *Consumer) retryLoop(ctx context.Context) {
	q := dlq.Open(c.b, c.cfg.dlqTopic)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-c.rescan:
		}
		next := c.redriveDue(ctx, q)
		timer.Reset(time.Until(next))
	}
}

// redriveDue redrives what is due and returns when to look again.
func (c *Consumer) redriveDue(ctx context.Context, q *dlq.Queue) time.Time {
	now := time.Now()
	next := now.Add(maxRescan)
	entries, err := q.List(ctx, dlq.Filter{Class: dlq.ClassScheduled})
	if err != nil {
		if ctx.Err() == nil {
			c.cfg.logger.Warn("reading scheduled retries failed", "dlq", c.cfg.dlqTopic, "err", err)
		}
		return now.Add(time.Second)
	}
	var due []*ferry.Message
	for _, e := range entries {
		tp := backend.TopicPartition{Topic: e.Original.Topic, Partition: e.Original.Partition}
		if e.Group != c.group || !c.owns(tp) {
			continue
		}
		if e.RetryAt.After(now) {
			next = minTime(next, e.RetryAt)
			continue
		}
		due = append(due, e.Original)
	}
	if len(due) == 0 {
		return next
	}
	// The key's parked messages go with each due entry, in order.
	if err := c.redrive(ctx, q, dlq.Filter{Class: dlq.ClassScheduled}, due); err != nil {
		if ctx.Err() == nil {
			c.cfg.logger.Warn("redriving scheduled retries failed", "dlq", c.cfg.dlqTopic, "err", err)
		}
		return now.Add(time.Second)
	}
	return next
}

// redrive sends the DLQ entries of originals (those matching f, by the
// originals' IDs; the dead entries that share a key with them go along)
// back to their topics, and reports each original as EventRedriven.
func (c *Consumer) redrive(ctx context.Context, q *dlq.Queue, f dlq.Filter, originals []*ferry.Message) error {
	for _, m := range originals {
		f.IDs = append(f.IDs, m.ID)
	}
	if _, err := q.Redrive(ctx, dlq.RedriveOpts{Filter: f}); err != nil {
		return err
	}
	for _, m := range originals {
		c.emit(Event{Kind: EventRedriven, Message: m})
	}
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
