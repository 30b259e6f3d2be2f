package consumer

import (
	"strconv"
	"time"

	"github.com/ferrymq/ferry"
)

// Durable retries. A retry whose delay is at least the durable threshold
// (WithDurableRetry) does not wait in memory, where a restart would lose
// the wait and a long one would hold the partition's watermark: the
// message goes to the group's DLQ as class "scheduled" with its due time,
// and its key is parked behind it exactly as behind a dead letter (later
// messages of the key are parked in the DLQ, in order; other keys keep
// flowing). The member owning the source partition handles the entry from
// the DLQ, and with it the key's parked messages, once it is due, with the
// attempt count and first failure time the entry records, so the policy's
// MaxAttempts and MaxElapsed still hold. Everything is in the DLQ topic,
// so a restart or rebalance loses nothing: the new owner reads the entry
// and settles the key when it is due.

// Headers a scheduled retry's dead letter carries on the message.
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

// schedule writes m's durable retry, due after delay: its key parks
// behind it, and the worker settles the key when it is due (settle.go).
// It returns false if the worker stopped first (m will be redelivered).
func (w *worker) schedule(m *ferry.Message, f failure, delay time.Duration) bool {
	due := f.last.Add(delay)
	f.retryAt = due
	f.why = scheduledReason(due, f.class)
	if !w.writeDeadLetter(withAttempts(m, f.attempts, f.first), f) {
		return false
	}
	w.c.emit(Event{Kind: EventScheduled, Message: m, Attempt: f.attempts, Err: f.err, Class: f.class, Delay: delay})
	w.wakeAt(refOf(m.Key), due)
	return true
}
