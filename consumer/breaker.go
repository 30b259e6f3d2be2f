package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// BreakerSettings configure the handler's circuit breaker.
type BreakerSettings struct {
	// ConsecutiveFailures of retryable kinds open the breaker (default 5).
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
// message's fault (permanent, decode) never trip it.
func WithCircuitBreaker(s BreakerSettings) Opt {
	return optFunc(func(c *cfg) {
		if s.ConsecutiveFailures == 0 {
			s.ConsecutiveFailures = 5
		}
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
	cb   *gobreaker.TwoStepCircuitBreaker[struct{}]
	wait time.Duration
}

func newBreaker(name string, s *BreakerSettings, onChange func(from, to string)) *breaker {
	st := gobreaker.Settings{
		Name:        name,
		MaxRequests: s.Probes,
		Timeout:     s.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.ConsecutiveFailures },
		// The message's own faults say nothing about the dependency.
		IsSuccessful: func(err error) bool { return err == nil || !retry.Classify(err).Retryable() },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if onChange != nil {
				onChange(from.String(), to.String())
			}
		},
	}
	return &breaker{cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](st), wait: max(s.OpenFor/10, time.Millisecond)}
}

// State returns "closed", "open" or "half-open".
func (b *breaker) State() string { return b.cb.State().String() }

// run makes one call through the breaker, first waiting (until ctx ends)
// while it is open. counts reports whether the outcome should count as an
// attempt: a failure that (re)opened the breaker does not, since it was
// the dependency, not the message, that failed.
func (b *breaker) run(ctx context.Context, call func() error) (err error, counts bool) {
	for {
		done, aerr := b.cb.Allow()
		if aerr == nil {
			err = call()
			done(err)
			if err != nil && retry.Classify(err).Retryable() && b.cb.State() != gobreaker.StateClosed {
				return err, false
			}
			return err, true
		}
		if !errors.Is(aerr, gobreaker.ErrOpenState) && !errors.Is(aerr, gobreaker.ErrTooManyRequests) {
			return fmt.Errorf("%w: circuit breaker: %v", ferry.ErrInvalidArgument, aerr), true
		}
		select {
		case <-time.After(b.wait):
		case <-ctx.Done():
			return ctx.Err(), true
		}
	}
}
