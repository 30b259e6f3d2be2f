package consumer

import (
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

type failure struct {
	attempts    int
	first, last time.Time
	err         error
	class       retry.Class
	why         string
	retryAt     time.Time // a scheduled retry's due time
}

// deadLetter writes m to the DLQ with why it failed, retrying the write
// until it succeeds or the worker stops (then m is abandoned and will be
// redelivered: it is never dropped).
func (w *worker) deadLetter(m *ferry.Message, f failure) bool {
	if !w.writeDeadLetter(m, f) {
		return false
	}
	w.c.emit(Event{Kind: EventDeadLettered, Message: m, Attempt: f.attempts, Err: f.err, Class: f.class})
	return true
}

// writeDeadLetter writes m's DLQ entry, retrying until it is written
// (true) or the worker stops (false).
func (w *worker) writeDeadLetter(m *ferry.Message, f failure) bool {
	c := w.c
	class := f.class
	if !f.retryAt.IsZero() {
		class = dlq.ClassScheduled
	}
	dl := dlq.NewEntry(m, c.cfg.dlqTopic, dlq.Failure{Group: c.group, Handler: c.cfg.handlerName, Attempts: f.attempts,
		First: f.first, Last: f.last, Err: f.err, Class: class, Reason: f.why, RetryAt: f.retryAt})
	if err := w.awaitLease(); err != nil {
		c.emit(Event{Kind: EventAbandoned, Message: m, Err: err})
		return false
	}
	if !w.publishDLQ(w.ctx, dl, m) {
		return false
	}
	if m.Key != nil {
		w.markParked(m.Key)
	}
	return true
}
