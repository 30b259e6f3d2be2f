package consumer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// Review of the breaker change: the time a message waits while the
// breaker is open must not count toward MaxElapsed. Only the wait before a
// call that ended with the breaker open was taken off. When
// another message's probe closes the breaker, the waiting message's next
// call is let through and, failing once more, counts: its whole wait
// behind the open breaker (10s here, MaxElapsed 3s) is in its time in
// failure, and it is dead-lettered at once. Same scenario as
// TestBreakerOpenTimeDoesNotCountTowardMaxElapsed with OpenFor longer than
// MaxElapsed and b/0 arriving after the breaker turned half-open.
func TestReviewBreakerWaitBeforeCountedCallIsNotTheMessagesTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBackend(t)
		if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var mu sync.Mutex
		flaky := true
		handler := func(ctx context.Context, m *ferry.Message) error {
			if time.Since(start) < 10*time.Second {
				return errors.New("dependency down")
			}
			mu.Lock()
			defer mu.Unlock()
			if string(m.Payload) == "a/0" && flaky {
				flaky = false
				return errors.New("one more timeout after the outage")
			}
			return nil
		}
		events := NewEventStream(10000)
		c, stop := startConsumer(t, b, handler, WithDurableRetry(0), WithConcurrency(2),
			WithRetryPolicy(retry.Policy{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, MaxAttempts: 10, MaxElapsed: 3 * time.Second}),
			WithCircuitBreaker(BreakerSettings{ConsecutiveFailures: 3, OpenFor: 10 * time.Second}),
			WithObserver(events.Observe))
		publish(t, b, "a/0")
		time.Sleep(10500 * time.Millisecond)
		publish(t, b, "b/0") // half-open by now: its success closes the breaker
		time.Sleep(5 * time.Second)
		stop()
		for len(events.Events()) > 0 {
			e := <-events.Events()
			if e.Kind == EventDeadLettered {
				t.Fatalf("%s dead-lettered at attempt %d after waiting out the outage behind the open breaker (%v): the wait counted toward MaxElapsed 3s; breaker %s",
					e.Message.Payload, e.Attempt, e.Err, c.Stats().Breaker)
			}
		}
	})
}
