// Package retry decides whether and when a failed message is tried again:
// exponential backoff with full jitter, a cap, a maximum number of
// attempts, a maximum elapsed time, and one function (Classify) that says
// what kind of failure an error is.
//
// Full jitter (delay drawn uniformly from [0, min(cap, base·2^n)]) spreads
// retries of many messages that failed together, so a recovering
// dependency is not hit by a synchronized wave.
package retry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/ferrymq/ferry"
)

// Class is what kind of failure an error is. It decides retry and is
// recorded with dead letters.
type Class string

// Failure classes.
const (
	ClassTransient Class = "transient" // anything not classified otherwise: retried
	ClassPermanent Class = "permanent" // ferry.Permanent: straight to the DLQ
	ClassDecode    Class = "decode"    // the payload could not be decoded: straight to the DLQ
	ClassTimeout   Class = "timeout"   // the attempt exceeded its timeout: retried
	ClassPanic     Class = "panic"     // the handler panicked: retried, stack kept
)

// DecodeError marks a payload that could not be decoded into the handler's
// type. Retrying cannot fix it.
type DecodeError struct{ Err error }

func (e *DecodeError) Error() string { return "decode: " + e.Err.Error() }

// Unwrap returns the decoder's error.
func (e *DecodeError) Unwrap() error { return e.Err }

// PanicError is a recovered handler panic.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// Classify returns the class of err. It is the one place that decides what
// is retryable.
func Classify(err error) Class {
	var de *DecodeError
	var pe *PanicError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &de):
		return ClassDecode
	case ferry.IsPermanent(err):
		return ClassPermanent
	case errors.As(err, &pe):
		return ClassPanic
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout
	}
	return ClassTransient
}

// Retryable reports whether a failure of this class is worth retrying.
func (c Class) Retryable() bool { return c != ClassPermanent && c != ClassDecode }

// Policy configures retries. Zero fields take the defaults of
// DefaultPolicy.
type Policy struct {
	// InitialBackoff is the cap of the first retry's delay (default 100ms).
	InitialBackoff time.Duration
	// MaxBackoff caps every delay (default 30s).
	MaxBackoff time.Duration
	// MaxAttempts counts the first attempt too (default 5; 1 = no retries;
	// at most 1000, or UnlimitedAttempts).
	MaxAttempts int
	// MaxElapsed gives up once this long has passed since the first
	// failure (default 0: no limit).
	MaxElapsed time.Duration
	// AttemptTimeout bounds one handler call (default 0: none).
	AttemptTimeout time.Duration
}

// UnlimitedAttempts as MaxAttempts retries a retryable failure until the
// handler succeeds (or MaxElapsed, if set, passes): "retry until it
// works". The consequence: the message's key waits all that time, since
// its later messages are handled only after it (they park behind it as a
// durable retry with WithDurableRetry); only a permanent or decode
// failure reaches the DLQ. Pair it with a circuit breaker so an outage
// pauses every key instead of retrying each.
const UnlimitedAttempts = math.MaxInt

// DefaultPolicy is used for zero fields.
var DefaultPolicy = Policy{InitialBackoff: 100 * time.Millisecond, MaxBackoff: 30 * time.Second, MaxAttempts: 5}

// WithDefaults fills zero fields from DefaultPolicy.
func (p Policy) WithDefaults() Policy {
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = DefaultPolicy.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = DefaultPolicy.MaxBackoff
	}
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = DefaultPolicy.MaxAttempts
	}
	return p
}

// Validate checks the policy's bounds.
func (p Policy) Validate() error {
	switch {
	case p.InitialBackoff > p.MaxBackoff:
		return fmt.Errorf("%w: retry initial backoff %s exceeds max backoff %s", ferry.ErrInvalidArgument, p.InitialBackoff, p.MaxBackoff)
	case p.MaxAttempts > 1000 && p.MaxAttempts != UnlimitedAttempts:
		return fmt.Errorf("%w: %d retry attempts: at most 1000, or retry.UnlimitedAttempts", ferry.ErrInvalidArgument, p.MaxAttempts)
	case p.MaxElapsed < 0 || p.AttemptTimeout < 0:
		return fmt.Errorf("%w: negative retry duration", ferry.ErrInvalidArgument)
	}
	return nil
}

// Backoff draws the delay after the attempt-th failure (1-based):
// uniform in [0, min(MaxBackoff, InitialBackoff·2^(attempt-1))], "full
// jitter", so that many clients failing together spread their retries.
func (p Policy) Backoff(attempt int, rng *rand.Rand) time.Duration {
	ceiling := p.InitialBackoff << min(max(attempt, 1)-1, 30)
	if ceiling <= 0 || ceiling > p.MaxBackoff {
		ceiling = p.MaxBackoff
	}
	return time.Duration(rng.Int64N(int64(ceiling) + 1))
}

// Decision is what to do after a failed attempt.
type Decision struct {
	Retry bool          // try again after Delay; otherwise dead-letter
	Delay time.Duration // wait before the next attempt
	Class Class         // the failure's class
	Why   string        // why not retried, when Retry is false
}

// Next decides what follows the attempt-th failed attempt (1-based) of a
// message whose first failure was elapsed ago. rng draws the jitter.
func (p Policy) Next(attempt int, elapsed time.Duration, err error, rng *rand.Rand) Decision {
	class := Classify(err)
	d := Decision{Class: class}
	switch {
	case !class.Retryable():
		d.Why = fmt.Sprintf("%s failure is not retried", class)
		return d
	case attempt >= p.MaxAttempts:
		d.Why = fmt.Sprintf("gave up after %d attempts", attempt)
		return d
	}
	if after, ok := ferry.RetryDelay(err); ok {
		d.Delay = after // the handler knows better than the backoff
	} else {
		d.Delay = p.Backoff(attempt, rng)
	}
	if p.MaxElapsed > 0 && elapsed+d.Delay > p.MaxElapsed {
		d.Why = fmt.Sprintf("gave up: the next attempt would be %s after the first failure, past the %s limit", elapsed+d.Delay, p.MaxElapsed)
		return d
	}
	d.Retry = true
	return d
}
