package consumer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// A success that overlapped a failure (the call started before the
// failure was reported and finished after it) does not reset the count of
// consecutive failures: it may have been answered just before the
// dependency went down. With many lanes such late successes kept the
// breaker closed at the start of an outage while messages spent their
// attempts on it. A success that did not overlap a failure still resets
// the count.
func TestBreakerIgnoresSuccessesThatOverlapAFailure(t *testing.T) {
	ctx := context.Background()
	down := errors.New("dependency down")
	settings := &BreakerSettings{ConsecutiveFailures: 2, OpenFor: time.Hour, Probes: 1}

	b := newBreaker("overlap", settings, nil)
	started, release, slow := make(chan struct{}), make(chan struct{}), make(chan error)
	go func() {
		err, _, _ := b.run(ctx, func() error { close(started); <-release; return nil })
		slow <- err
	}()
	<-started
	if _, counts, _ := b.run(ctx, func() error { return down }); !counts {
		t.Fatal("the first failure of a closed breaker did not count as an attempt")
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if _, counts, _ := b.run(ctx, func() error { return down }); counts || b.State() != "open" {
		t.Fatalf("second consecutive failure: breaker %s, counted as an attempt: %v; want open and not counted (the success in between overlapped the first failure)", b.State(), counts)
	}

	b = newBreaker("sequential", settings, nil)
	for i, outcome := range []error{down, nil, down} {
		if err, _, _ := b.run(ctx, func() error { return outcome }); err != outcome {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if b.State() != "closed" {
		t.Fatalf("failure, success, failure in sequence: breaker %s, want closed", b.State())
	}
}

// A call the runtime cut short (a revoked partition, a stopping consumer)
// fails with the cancellation, which is no sign that the dependency is
// down: it must not count toward opening the breaker for the partitions
// the member keeps (a rebalance made Healthy report "dependency is
// failing").
func TestBreakerIgnoresCancellationByTheRuntime(t *testing.T) {
	settings := &BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour, Probes: 1}
	b := newBreaker("rebalance", settings, nil)
	for range 3 {
		ctx, cancel := context.WithCancel(context.Background())
		started := make(chan struct{})
		res := make(chan error, 1)
		go func() {
			err, _, _ := b.run(ctx, func() error { close(started); <-ctx.Done(); return ctx.Err() })
			res <- err
		}()
		<-started
		cancel()
		if err := <-res; !errors.Is(err, context.Canceled) {
			t.Fatalf("cut-short call returned %v", err)
		}
		if b.State() != "closed" {
			t.Fatalf("breaker %s after a call the runtime canceled, want closed", b.State())
		}
	}
	// A real failure still opens it.
	if _, counts, _ := b.run(context.Background(), func() error { return errors.New("dependency down") }); counts || b.State() != "open" {
		t.Fatalf("a failure with ConsecutiveFailures 1: breaker %s, counted %v; want open, not counted", b.State(), counts)
	}
}

// The breaker's threshold and the retry policy's attempts are checked
// together: the default threshold (5) would let a message with 3 attempts
// reach the DLQ during an outage before the breaker opened, so it is
// derived (min(5, MaxAttempts)); a threshold above MaxAttempts is refused
// with an error that says why.
func TestBreakerThresholdFollowsAttempts(t *testing.T) {
	b := newBackend(t)
	h := func(context.Context, *ferry.Message) error { return nil }
	three := WithRetryPolicy(retry.Policy{MaxAttempts: 3})
	c, err := New(b, "g", []string{"in"}, h, three, WithCircuitBreaker(BreakerSettings{}))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.cfg.breaker.ConsecutiveFailures; got != 3 {
		t.Fatalf("default threshold with MaxAttempts 3: %d, want 3", got)
	}
	c, err = New(b, "g", []string{"in"}, h, WithCircuitBreaker(BreakerSettings{}))
	if err != nil || c.cfg.breaker.ConsecutiveFailures != 5 {
		t.Fatalf("default threshold with the default policy: %v, %v; want 5", c, err)
	}
	_, err = New(b, "g", []string{"in"}, h, three, WithCircuitBreaker(BreakerSettings{ConsecutiveFailures: 4}))
	if !errors.Is(err, ferry.ErrInvalidArgument) || !strings.Contains(err.Error(), "at most MaxAttempts") {
		t.Fatalf("threshold 4 with MaxAttempts 3: %v, want ErrInvalidArgument saying why", err)
	}
}
