package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// BreakerSettings configure the handler's circuit breaker.
type BreakerSettings struct {
	// ConsecutiveFailures of retryable kinds open the breaker (default 5,
	// or the retry policy's MaxAttempts if that is lower). The failure
	// that opens the breaker does not count as an attempt, so with at most
	// MaxAttempts a message never spends its last attempt on an outage; a
	// larger value is refused, since an outage would then fill the DLQ.
	ConsecutiveFailures uint32
	// OpenFor is how long the breaker stays open before it lets probes
	// through (default 5s).
	OpenFor time.Duration
	// Probes is how many calls a half-open breaker lets through; that
	// many successes close it (default 1).
	Probes uint32
}

// WithCircuitBreaker puts a circuit breaker around the handler. While it is
// open, the consumer pauses: messages wait, attempts are not spent, nothing
// is dead-lettered because a dependency is down. Failures that are the
// message's fault (permanent, decode) never trip it. With a breaker, a
// retryable failure is retried at least until the message has failed
// ConsecutiveFailures times, even where the policy's MaxElapsed or a long
// Retry-After would give up sooner, and the time a message waits while
// the breaker is open does not count toward MaxElapsed.
func WithCircuitBreaker(s BreakerSettings) Opt {
	return optFunc(func(c *cfg) {
		if s.OpenFor <= 0 {
			s.OpenFor = 5 * time.Second
		}
		if s.Probes == 0 {
			s.Probes = 1
		}
		c.breaker = &s
	})
}

// breaker wraps gobreaker's two-step breaker.
type breaker struct {
	cb        *gobreaker.TwoStepCircuitBreaker[struct{}]
	wait      time.Duration
	threshold int // consecutive failures that open it

	// mu orders the reports of outcomes to cb with failures, which counts
	// the dependency's failures reported so far: a call that succeeds
	// while another call's failure is reported is not a sign that the
	// dependency is up (it may have been answered just before it went
	// down), so its success is excluded instead of resetting the count of
	// consecutive failures. Without that, with many lanes, the successes
	// of calls that started before an outage kept the breaker closed
	// while messages spent their attempts on the outage.
	mu       sync.Mutex
	failures uint64
}

// errOverlapped marks a success reported after a failure that happened
// while the call ran: excluded from the breaker's counts.
var errOverlapped = errors.New("consumer: success overlapped a failure")

// errStopped marks a call the runtime itself cut short (its partition was
// revoked, or the consumer stopped): whatever it returned says nothing
// about the dependency, so it is excluded from the breaker's counts.
var errStopped = errors.New("consumer: call cut short by the runtime")

func newBreaker(name string, s *BreakerSettings, onChange func(from, to string)) *breaker {
	st := gobreaker.Settings{
		Name:        name,
		MaxRequests: s.Probes,
		Timeout:     s.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.ConsecutiveFailures },
		// The message's own faults say nothing about the dependency.
		IsSuccessful: func(err error) bool { return err == nil || !retry.Classify(err).Retryable() },
		IsExcluded:   func(err error) bool { return errors.Is(err, errOverlapped) || errors.Is(err, errStopped) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if onChange != nil {
				onChange(from.String(), to.String())
			}
		},
	}
	return &breaker{cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](st), wait: max(s.OpenFor/10, time.Millisecond), threshold: int(s.ConsecutiveFailures)}
}

// State returns "closed", "open" or "half-open".
func (b *breaker) State() string { return b.cb.State().String() }

// run makes one call through the breaker, first waiting (until ctx ends)
// while it is open. counts reports whether the outcome should count as an
// attempt: a failure that (re)opened the breaker does not, since it was
// the dependency, not the message, that failed. ctx is the runtime's own
// context for the call: once it is done, the outcome is excluded.
func (b *breaker) run(ctx context.Context, call func() error) (err error, counts bool, waited time.Duration) {
	began := time.Now()
	for {
		done, aerr := b.cb.Allow()
		if aerr == nil {
			waited = time.Since(began)
			b.mu.Lock()
			seen := b.failures
			b.mu.Unlock()
			err = call()
			stopped := ctx.Err() != nil
			failed := err != nil && retry.Classify(err).Retryable() && !stopped
			b.mu.Lock()
			switch {
			case stopped:
				done(errStopped)
			case failed:
				b.failures++
				done(err)
			case err == nil && b.failures != seen:
				done(errOverlapped)
			default:
				done(err)
			}
			b.mu.Unlock()
			if failed && b.cb.State() != gobreaker.StateClosed {
				return err, false, waited
			}
			return err, true, waited
		}
		if !errors.Is(aerr, gobreaker.ErrOpenState) && !errors.Is(aerr, gobreaker.ErrTooManyRequests) {
			return fmt.Errorf("%w: circuit breaker: %v", ferry.ErrInvalidArgument, aerr), true, time.Since(began)
		}
		select {
		case <-time.After(b.wait):
		case <-ctx.Done():
			return ctx.Err(), true, time.Since(began)
		}
	}
}
