package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// Consume with retries and a dead-letter queue: the poison order is
// dead-lettered with why, and the customer's next order is parked behind
// it (not handled out of order) until the poison one is redriven.
func Example() {
	dir, _ := os.MkdirTemp("", "ferry-example-")
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	log, _ := commitlog.Open(ctx, dir)
	defer log.Close()
	b := embedded.New(log)
	defer b.Close()

	b.EnsureTopic(ctx, "orders", 4)
	for _, p := range []string{"order 1", "poison", "order 3"} {
		b.Publish(ctx, &ferry.Message{Topic: "orders", Key: []byte("customer-7"), Payload: []byte(p)})
	}

	finished := 0
	c, _ := consumer.New(b, "billing", []string{"orders"},
		func(ctx context.Context, m *ferry.Message) error {
			if string(m.Payload) == "poison" {
				return ferry.Permanent(errors.New("cannot bill this order"))
			}
			fmt.Println("billed", string(m.Payload))
			return nil
		},
		consumer.WithRetryPolicy(retry.Policy{MaxAttempts: 5, InitialBackoff: 10 * time.Millisecond}),
		consumer.WithObserver(func(e consumer.Event) {
			if e.Kind == consumer.EventHandled || e.Kind == consumer.EventDeadLettered {
				if finished++; finished == 3 {
					cancel()
				}
			}
		}))
	c.Run(ctx) // returns when ctx is canceled, after committing

	entries, _ := dlq.Open(b, "billing.dlq").List(context.Background(), dlq.Filter{})
	for _, e := range entries {
		fmt.Printf("dead letter: %s (%s)\n", e.Original.Payload, e.Class)
	}
	// Output:
	// billed order 1
	// dead letter: poison (permanent)
	// dead letter: order 3 (parked)
}
