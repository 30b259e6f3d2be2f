package consumer

import (
	"context"
	"errors"
	"testing"
	"time"
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
		err, _ := b.run(ctx, func() error { close(started); <-release; return nil })
		slow <- err
	}()
	<-started
	if _, counts := b.run(ctx, func() error { return down }); !counts {
		t.Fatal("the first failure of a closed breaker did not count as an attempt")
	}
	close(release)
	if err := <-slow; err != nil {
		t.Fatal(err)
	}
	if _, counts := b.run(ctx, func() error { return down }); counts || b.State() != "open" {
		t.Fatalf("second consecutive failure: breaker %s, counted as an attempt: %v; want open and not counted (the success in between overlapped the first failure)", b.State(), counts)
	}

	b = newBreaker("sequential", settings, nil)
	for i, outcome := range []error{down, nil, down} {
		if err, _ := b.run(ctx, func() error { return outcome }); err != outcome {
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
			err, _ := b.run(ctx, func() error { close(started); <-ctx.Done(); return ctx.Err() })
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
	if _, counts := b.run(context.Background(), func() error { return errors.New("dependency down") }); counts || b.State() != "open" {
		t.Fatalf("a failure with ConsecutiveFailures 1: breaker %s, counted %v; want open, not counted", b.State(), counts)
	}
}
