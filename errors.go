package ferry

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Callers branch on them with errors.Is; the errors ferry
// returns wrap them with the specifics (which topic, which limit, which file).
var (
	// ErrClosed: the log, producer or consumer was closed.
	ErrClosed = errors.New("ferry: closed")
	// ErrBackpressure: a bounded queue is full and the caller asked not to wait.
	ErrBackpressure = errors.New("ferry: backpressure: queue full")
	// ErrInvalidArgument: bad input (oversize message, bad topic name, bad
	// option value). Nothing was changed.
	ErrInvalidArgument = errors.New("ferry: invalid argument")
	// ErrTopicNotFound: the topic does not exist.
	ErrTopicNotFound = errors.New("ferry: topic not found")
	// ErrTopicExists: a topic of that name already exists.
	ErrTopicExists = errors.New("ferry: topic already exists")
	// ErrOffsetOutOfRange: the offset is before the partition's first
	// retained offset or after its end.
	ErrOffsetOutOfRange = errors.New("ferry: offset out of range")
	// ErrCorrupt marks data that failed its checksum or could not be
	// decoded. It is never served as a message.
	ErrCorrupt = errors.New("ferry: corrupt data")
	// ErrLocked: another process owns the data directory.
	ErrLocked = errors.New("ferry: data directory locked")
	// ErrLogFailed: a write or fsync failed earlier; the log refuses further
	// writes until it is reopened, so no write is acknowledged on top of a
	// state that may not be on disk.
	ErrLogFailed = errors.New("ferry: log failed")
)

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: a message whose handler returns
// it goes straight to the dead-letter queue. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or an error it wraps) was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// retryAfterError asks for a retry after a given delay.
type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string {
	return fmt.Sprintf("retry after %s: %v", e.delay, e.err)
}
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter asks for the message to be retried no sooner than d from now
// (for example when a dependency answered 429 with a Retry-After header).
// The retry policy honours d instead of its own backoff. A nil err gets a
// generic message so the retry is still recorded with a reason.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		err = errors.New("retry requested")
	}
	if d < 0 {
		d = 0
	}
	return &retryAfterError{err: err, delay: d}
}

// RetryDelay returns the delay requested with RetryAfter, if err carries one.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.delay, true
	}
	return 0, false
}
