package retry

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
)

func TestClassify(t *testing.T) {
	base := errors.New("boom")
	for _, c := range []struct {
		err  error
		want Class
	}{
		{base, ClassTransient},
		{ferry.Permanent(base), ClassPermanent},
		{fmt.Errorf("wrapped: %w", ferry.Permanent(base)), ClassPermanent},
		{&DecodeError{Err: base}, ClassDecode},
		{&PanicError{Value: "x"}, ClassPanic},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), ClassTimeout},
		{ferry.RetryAfter(base, time.Second), ClassTransient},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %s, want %s", c.err, got, c.want)
		}
	}
}

func TestBackoffFullJitterWithinCap(t *testing.T) {
	p := Policy{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, MaxAttempts: 100}.WithDefaults()
	rng := rand.New(rand.NewPCG(1, 2))
	for attempt := 1; attempt < 50; attempt++ {
		ceiling := min(p.InitialBackoff<<min(attempt-1, 30), p.MaxBackoff)
		var maxSeen time.Duration
		for i := 0; i < 200; i++ {
			d := p.Next(attempt, 0, errors.New("x"), rng)
			if !d.Retry || d.Delay < 0 || d.Delay > ceiling {
				t.Fatalf("attempt %d: %+v, ceiling %s", attempt, d, ceiling)
			}
			maxSeen = max(maxSeen, d.Delay)
		}
		// Full jitter spreads over the whole range, not just near the top.
		if maxSeen < ceiling/2 {
			t.Fatalf("attempt %d: largest of 200 delays %s, ceiling %s", attempt, maxSeen, ceiling)
		}
	}
}

func TestDecisions(t *testing.T) {
	p := Policy{MaxAttempts: 3, MaxElapsed: time.Second}.WithDefaults()
	rng := rand.New(rand.NewPCG(3, 4))
	err := errors.New("x")
	if d := p.Next(3, 0, err, rng); d.Retry || d.Why == "" {
		t.Errorf("after max attempts: %+v", d)
	}
	if d := p.Next(1, 0, ferry.Permanent(err), rng); d.Retry || d.Class != ClassPermanent {
		t.Errorf("permanent: %+v", d)
	}
	if d := p.Next(1, 0, &DecodeError{Err: err}, rng); d.Retry || d.Class != ClassDecode {
		t.Errorf("decode: %+v", d)
	}
	if d := p.Next(1, 0, ferry.RetryAfter(err, 700*time.Millisecond), rng); !d.Retry || d.Delay != 700*time.Millisecond {
		t.Errorf("retry-after honoured: %+v", d)
	}
	if d := p.Next(1, 900*time.Millisecond, ferry.RetryAfter(err, 200*time.Millisecond), rng); d.Retry {
		t.Errorf("past max elapsed: %+v", d)
	}
	if err := (Policy{InitialBackoff: time.Minute, MaxBackoff: time.Second}).Validate(); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Errorf("validate: %v", err)
	}
}
