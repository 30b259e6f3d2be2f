package consumer

import (
	"crypto/sha256"
	"errors"
	"strconv"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// Dead-letter metadata headers. A DLQ entry is the original message (key,
// payload and headers untouched) plus these.
const (
	HeaderDLQOriginalID   = "ferry-dlq-original-id"
	HeaderDLQTopic        = "ferry-dlq-topic"
	HeaderDLQPartition    = "ferry-dlq-partition"
	HeaderDLQOffset       = "ferry-dlq-offset"
	HeaderDLQOriginalTime = "ferry-dlq-original-time"
	HeaderDLQGroup        = "ferry-dlq-group"
	HeaderDLQHandler      = "ferry-dlq-handler"
	HeaderDLQAttempts     = "ferry-dlq-attempts"
	HeaderDLQFirstFailure = "ferry-dlq-first-failure"
	HeaderDLQLastFailure  = "ferry-dlq-last-failure"
	HeaderDLQError        = "ferry-dlq-error"
	HeaderDLQClass        = "ferry-dlq-class"
	HeaderDLQReason       = "ferry-dlq-reason"
	HeaderDLQStack        = "ferry-dlq-stack"
	maxDLQErrorBytes      = 4 << 10
)

type failure struct {
	attempts    int
	first, last time.Time
	err         error
	class       retry.Class
	why         string
}

// derivedID is a deterministic ID for a message derived from another (a
// dead letter, a redrive), so that producing it twice is deduplicated.
func derivedID(kind, scope string, id ferry.ID) ferry.ID {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write(id[:])
	var out ferry.ID
	copy(out[:], h.Sum(nil))
	out[6] = out[6]&0x0f | 0x80 // UUID version 8: custom
	out[8] = out[8]&0x3f | 0x80 // RFC 4122 variant
	return out
}

// deadLetter writes m to the DLQ with why it failed, retrying the write
// until it succeeds or the worker stops (then m is abandoned and will be
// redelivered: it is never dropped).
func (w *worker) deadLetter(m *ferry.Message, f failure) bool {
	c := w.c
	text := f.err.Error()
	if len(text) > maxDLQErrorBytes {
		text = text[:maxDLQErrorBytes]
	}
	hdr := append([]ferry.Header(nil), m.Headers...)
	add := func(k, v string) { hdr = append(hdr, ferry.Header{Key: k, Value: []byte(v)}) }
	add(HeaderDLQOriginalID, m.ID.String())
	add(HeaderDLQTopic, m.Topic)
	add(HeaderDLQPartition, strconv.Itoa(int(m.Partition)))
	add(HeaderDLQOffset, strconv.FormatUint(m.Offset, 10))
	add(HeaderDLQOriginalTime, m.Time.UTC().Format(time.RFC3339Nano))
	add(HeaderDLQGroup, c.group)
	add(HeaderDLQHandler, c.cfg.handlerName)
	add(HeaderDLQAttempts, strconv.Itoa(f.attempts))
	add(HeaderDLQFirstFailure, f.first.UTC().Format(time.RFC3339Nano))
	add(HeaderDLQLastFailure, f.last.UTC().Format(time.RFC3339Nano))
	add(HeaderDLQError, text)
	add(HeaderDLQClass, string(f.class))
	add(HeaderDLQReason, f.why)
	var pe *retry.PanicError
	if errors.As(f.err, &pe) {
		add(HeaderDLQStack, string(pe.Stack))
	}
	payload := m.Payload
	if payload == nil {
		payload = []byte{}
	}
	dl := &ferry.Message{ID: deadLetterID(c.group, m.ID), Topic: c.cfg.dlqTopic, Key: m.Key, Payload: payload, Headers: hdr}
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		err := c.b.Publish(w.ctx, dl)
		if err == nil {
			c.emit(Event{Kind: EventDeadLettered, Message: m, Attempt: f.attempts, Err: f.err, Class: f.class})
			return true
		}
		c.cfg.logger.Warn("dead-letter write failed; retrying", "id", m.ID, "err", err)
		select {
		case <-time.After(backoff):
		case <-w.ctx.Done():
			c.emit(Event{Kind: EventAbandoned, Message: m, Attempt: f.attempts, Err: err})
			return false
		}
	}
}
