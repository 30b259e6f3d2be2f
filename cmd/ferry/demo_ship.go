package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// shipStage runs the shipping consumer over the payments: a flaky carrier
// API (some first attempts fail), one poison payment, and an outage of the
// carrier for 300 calls behind a circuit breaker. Then the poison payment
// is fixed and the DLQ redriven. It reports the evidence that nothing was dropped and that order held
// through retries, the DLQ and the redrive, and for the breaker.
func shipStage(ctx context.Context, l *commitlog.Log, tel *telemetry) ([]demoCheck, error) {
	payments, err := readTopic(l, "payments")
	if err != nil || len(payments) == 0 {
		return nil, fmt.Errorf("no payments to ship: %v", err)
	}
	poison := payments[len(payments)/3].ID
	b := embedded.New(l)
	defer b.Close()

	var mu sync.Mutex
	calls, outageFrom := 0, len(payments)/2
	fixed := false
	shipped := map[ferry.ID]bool{}    // payment (or its redriven copy's original) shipped
	lastOffset := map[string]uint64{} // customer -> offset of the last payment shipped
	violations, retried, dead, outageDead := 0, 0, 0, 0
	inOutage := func() bool { return calls >= outageFrom && calls < outageFrom+300 }
	original := func(m *ferry.Message) ferry.ID {
		if of, ok := m.Header(dlq.HeaderRedriveOf); ok {
			if id, err := ferry.ParseID(string(of)); err == nil {
				return id
			}
		}
		return m.ID
	}
	offsetOf := map[ferry.ID]uint64{}
	for _, p := range payments {
		offsetOf[p.ID] = p.Offset + uint64(p.Partition)<<48
	}
	handler := func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		switch {
		case inOutage():
			return errors.New("carrier API unavailable")
		case original(m) == poison && !fixed:
			return ferry.Permanent(errors.New("address fails validation"))
		case consumer.Attempt(ctx) == 1 && flaky(m.ID):
			return errors.New("carrier API timeout")
		}
		id := original(m)
		if !shipped[id] {
			shipped[id] = true
			if last, ok := lastOffset[string(m.Key)]; ok && offsetOf[id] < last {
				violations++
			}
			lastOffset[string(m.Key)] = offsetOf[id]
		}
		return nil
	}
	finished := make(chan struct{}, 4*len(payments))
	c, err := consumer.New(b, "shipping", []string{"payments"}, handler,
		consumer.WithConcurrency(32),
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxAttempts: 3}),
		consumer.WithCircuitBreaker(consumer.BreakerSettings{OpenFor: 20 * time.Millisecond}),
		consumer.WithObserver(tel.observe("shipping", func(e consumer.Event) {
			switch e.Kind {
			case consumer.EventRetried:
				mu.Lock()
				retried++
				mu.Unlock()
			case consumer.EventDeadLettered:
				mu.Lock()
				dead++
				if e.Class == retry.ClassTransient {
					outageDead++
				}
				mu.Unlock()
				finished <- struct{}{}
			case consumer.EventHandled:
				finished <- struct{}{}
			}
		})))
	if err != nil {
		return nil, err
	}
	defer tel.watch("shipping", c, b)()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	wait := func(n int) error {
		timeout := time.After(2 * time.Minute)
		for i := 0; i < n; i++ {
			select {
			case <-finished:
			case <-timeout:
				return fmt.Errorf("shipping stalled after %d of %d messages", i, n)
			}
		}
		return nil
	}
	if err := wait(len(payments)); err != nil {
		cancel()
		<-done
		return nil, err
	}
	mu.Lock()
	fixed = true
	deadBefore := dead
	mu.Unlock()
	redriven, err := dlq.Open(b, "shipping.dlq").Redrive(ctx, dlq.RedriveOpts{})
	if err == nil {
		err = wait(redriven)
	}
	cancel()
	<-done
	if err != nil {
		return nil, err
	}
	mu.Lock()
	defer mu.Unlock()
	missing := 0
	for _, p := range payments {
		if !shipped[p.ID] {
			missing++
		}
	}
	return []demoCheck{
		{"nothing dropped", fmt.Sprintf("%d payments: %d shipped, %d retried attempts, %d dead-lettered (1 poison + the customer's later payments parked behind it), %d redriven and shipped, %d missing",
			len(payments), len(shipped), retried, deadBefore, redriven, missing), missing == 0 && deadBefore > 0 && redriven == deadBefore},
		{"order through DLQ and redrive", fmt.Sprintf("%d customers, %d shipped out of order", len(lastOffset), violations), violations == 0},
		{"breaker: outage is not a DLQ flood", fmt.Sprintf("carrier down for 300 calls: %d messages dead-lettered by it", outageDead), outageDead == 0},
	}, nil
}

// flaky fails the first attempt of about one message in ten.
func flaky(id ferry.ID) bool {
	h := fnv.New32a()
	h.Write(id[:])
	return h.Sum32()%10 == 0
}
