// Command orders is an order service on PostgreSQL that publishes through
// the transactional outbox, and a projection that consumes through the
// inbox: every committed order reaches the projection exactly once, no
// refused order is ever published, and redelivery changes nothing.
//
//	go run ./examples/orders --postgres postgres://postgres@127.0.0.1:5432/test
//
// It places orders (refusing some in the middle of their transaction),
// relays the outbox to an embedded ferry log, runs a consumer whose
// handler updates per-customer totals in the same transaction as its
// inbox record (failing now and then after writing, to show the rollback),
// then replays the whole topic to a second consumer group that shares the
// inbox, and checks the totals against the orders table.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/outbox"
	"github.com/ferrymq/ferry/retry"
)

func main() {
	url := flag.String("postgres", "postgres://postgres@127.0.0.1:5432/test", "PostgreSQL URL")
	schema := flag.String("schema", "ferry_orders_example", "schema to create the example's tables in (dropped and recreated)")
	dir := flag.String("dir", "", "ferry data directory (default: a temporary directory)")
	n := flag.Int("orders", 300, "orders to place")
	flag.Parse()
	ctx := context.Background()
	if *dir == "" {
		d, err := os.MkdirTemp("", "ferry-orders-")
		if err != nil {
			fail(err)
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	pool, err := connect(ctx, *url, *schema)
	if err != nil {
		fail(err)
	}
	defer pool.Close()
	if err := run(ctx, pool, *dir, *n, os.Stdout); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "orders:", err)
	os.Exit(1)
}

// connect recreates schema and returns a pool whose connections use it.
func connect(ctx context.Context, url, schema string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	admin, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", url, err)
	}
	defer admin.Close(ctx)
	s := pgx.Identifier{schema}.Sanitize()
	if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+s+" CASCADE; CREATE SCHEMA "+s); err != nil {
		return nil, err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	return pgxpool.NewWithConfig(ctx, cfg)
}

// OrderPlaced is the event the order service publishes.
type OrderPlaced struct {
	OrderID  string `json:"order_id"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount"`
}

const topic = "orders.placed"

func run(ctx context.Context, pool *pgxpool.Pool, dir string, orders int, out io.Writer) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := outbox.Migrate(ctx, pool); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `
		CREATE TABLE orders (id uuid PRIMARY KEY, customer text NOT NULL, amount int NOT NULL);
		CREATE TABLE customer_totals (customer text PRIMARY KEY, orders int NOT NULL, amount int NOT NULL)`); err != nil {
		return err
	}
	l, err := commitlog.Open(ctx, dir, commitlog.WithLogger(quiet))
	if err != nil {
		return err
	}
	defer l.Close()
	b := embedded.New(l)
	defer b.Close()
	if err := b.EnsureTopic(ctx, topic, 4); err != nil {
		return err
	}

	// The order service: the order row and its event commit together.
	ob := outbox.New(pool, outbox.WithLogger(quiet))
	placed, refused := 0, 0
	for i := range orders {
		err := placeOrder(ctx, pool, ob, fmt.Sprintf("customer-%02d", i%12), 10+i%7, i%9 == 4)
		switch {
		case errors.Is(err, errOverLimit):
			refused++
		case err != nil:
			return err
		default:
			placed++
		}
	}
	fmt.Fprintf(out, "placed %d orders, refused %d (rolled back with their events)\n", placed, refused)

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	relayDone := make(chan error, 1)
	go func() { relayDone <- ob.NewRelay(b, outbox.WithPollInterval(10*time.Millisecond)).Run(runCtx) }()

	// The projection: totals and the inbox record commit together.
	inbox, err := outbox.NewInbox(pool, "customer-totals", 7*24*time.Hour, outbox.WithLogger(quiet))
	if err != nil {
		return err
	}
	var applied, failed atomic.Int64
	project := inbox.Handler(func(ctx context.Context, tx pgx.Tx, m *ferry.Message) error {
		var ev OrderPlaced
		if err := json.Unmarshal(m.Payload, &ev); err != nil {
			return ferry.Permanent(err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO customer_totals VALUES ($1, 1, $2)
			ON CONFLICT (customer) DO UPDATE SET orders = customer_totals.orders + 1, amount = customer_totals.amount + $2`,
			ev.Customer, ev.Amount); err != nil {
			return err
		}
		if consumer.Attempt(ctx) == 1 && m.ID[15]%5 == 0 {
			failed.Add(1)
			return errors.New("projection store timed out after the write") // rolls back write and record
		}
		applied.Add(1)
		return nil
	})
	// consume runs a group over what the topic holds, and returns once
	// it has caught up (every message handled, or dead-lettered).
	consume := func(group string, h consumer.Handler, want int64, counter *atomic.Int64) error {
		cctx, cancel := context.WithTimeout(runCtx, time.Minute)
		defer cancel()
		c, err := consumer.New(b, group, []string{topic}, h,
			consumer.WithLogger(quiet), consumer.WithConcurrency(8),
			consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond}))
		if err != nil {
			return err
		}
		if err := c.RunUntilCaughtUp(cctx); err != nil {
			return fmt.Errorf("group %s: %w", group, err)
		}
		if got := counter.Load(); got < want {
			return fmt.Errorf("group %s caught up having handled %d of %d messages", group, got, want)
		}
		return nil
	}
	if err := consume("projection", project, int64(placed), &applied); err != nil {
		return err
	}
	fmt.Fprintf(out, "projected %d events (%d first attempts failed after writing and were rolled back, then retried)\n", applied.Load(), failed.Load())

	// Every event again, to a second group sharing the inbox: a redelivery
	// of the whole topic.
	var redelivered atomic.Int64
	replay := inbox.Handler(func(context.Context, pgx.Tx, *ferry.Message) error {
		redelivered.Add(1)
		return nil
	})
	var offered atomic.Int64
	countOffered := func(ctx context.Context, m *ferry.Message) error {
		offered.Add(1)
		return replay(ctx, m)
	}
	if err := consume("projection-replay", countOffered, int64(placed), &offered); err != nil {
		return err
	}
	fmt.Fprintf(out, "redelivered all %d events: %d had a second effect\n", offered.Load(), redelivered.Load())
	stop()
	if err := <-relayDone; err != nil {
		return err
	}
	return check(ctx, pool, placed, redelivered.Load(), out)
}

var errOverLimit = errors.New("order over the customer's credit limit")

// placeOrder writes an order and its OrderPlaced event in one transaction;
// a refused order rolls both back.
func placeOrder(ctx context.Context, pool *pgxpool.Pool, ob *outbox.Outbox, customer string, amount int, refuse bool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		id := ferry.NewID()
		if _, err := tx.Exec(ctx, "INSERT INTO orders VALUES ($1, $2, $3)", id, customer, amount); err != nil {
			return err
		}
		payload, _ := json.Marshal(OrderPlaced{OrderID: id.String(), Customer: customer, Amount: amount})
		msg := &ferry.Message{Topic: topic, Key: []byte(customer), Payload: payload,
			Headers: []ferry.Header{{Key: ferry.HeaderType, Value: []byte("order.placed")}}}
		if err := ob.Add(ctx, tx, msg); err != nil {
			return err
		}
		if refuse { // the check fails after both writes: neither survives
			return errOverLimit
		}
		return nil
	})
}

// check compares the projection with the orders table.
func check(ctx context.Context, pool *pgxpool.Pool, placed int, secondEffects int64, out io.Writer) error {
	var mismatched, orders int
	err := pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM orders),
		       (SELECT count(*) FROM (SELECT customer, count(*) AS n, sum(amount) AS amount FROM orders GROUP BY customer) o
		        FULL JOIN customer_totals t USING (customer)
		        WHERE o.n IS DISTINCT FROM t.orders OR o.amount IS DISTINCT FROM t.amount)`).Scan(&orders, &mismatched)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "orders table: %d rows; customers whose projected totals differ: %d\n", orders, mismatched)
	if orders != placed || mismatched != 0 || secondEffects != 0 {
		return fmt.Errorf("projection does not match the orders: %d orders (%d placed), %d customers differ, %d second effects", orders, placed, mismatched, secondEffects)
	}
	fmt.Fprintln(out, "ok: every committed order projected exactly once, no refused order published")
	return nil
}
