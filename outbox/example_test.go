package outbox_test

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/outbox"
)

// An order and its event commit together; a relay publishes the event.
func ExampleOutbox_Add() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test")
	var b backend.Backend // any ferry backend, e.g. embedded.New(log)

	if err := outbox.Migrate(ctx, pool); err != nil {
		panic(err)
	}
	ob := outbox.New(pool)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "INSERT INTO orders (customer, amount) VALUES ($1, $2)", "c-7", 42); err != nil {
			return err
		}
		return ob.Add(ctx, tx, &ferry.Message{Topic: "orders.placed", Key: []byte("c-7"), Payload: []byte(`{"amount":42}`)})
	})
	if err != nil {
		panic(err)
	}
	go ob.NewRelay(b, outbox.WithRetention(72*time.Hour)).Run(ctx)
}

// A projection whose writes commit with the inbox record: a redelivered
// message is skipped, a failed one rolls back both.
func ExampleInbox_Handler() {
	ctx := context.Background()
	pool, _ := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/test")
	var b backend.Backend

	inbox, err := outbox.NewInbox(pool, "customer-totals", 7*24*time.Hour)
	if err != nil {
		panic(err)
	}
	h := inbox.Handler(func(ctx context.Context, tx pgx.Tx, m *ferry.Message) error {
		_, err := tx.Exec(ctx, "UPDATE customer_totals SET orders = orders + 1 WHERE customer = $1", string(m.Key))
		return err
	})
	c, err := consumer.New(b, "customer-totals", []string{"orders.placed"}, h)
	if err != nil {
		panic(err)
	}
	go c.Run(ctx)
}
