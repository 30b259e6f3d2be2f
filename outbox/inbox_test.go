package outbox

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/internal/testsvc"
)

func newInbox(t *testing.T) (*pgxpool.Pool, *Inbox) {
	t.Helper()
	pool, _ := testsvc.Postgres(t)
	ctx := context.Background()
	if err := Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE totals (customer text PRIMARY KEY, amount int NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	in, err := NewInbox(pool, "projector", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return pool, in
}

func total(t *testing.T, pool *pgxpool.Pool, customer string) int {
	t.Helper()
	var n int
	err := pool.QueryRow(context.Background(), "SELECT amount FROM totals WHERE customer = $1", customer).Scan(&n)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func addToTotal(ctx context.Context, tx pgx.Tx, m *ferry.Message) error {
	_, err := tx.Exec(ctx, `INSERT INTO totals VALUES ($1, 10)
		ON CONFLICT (customer) DO UPDATE SET amount = totals.amount + 10`, string(m.Key))
	return err
}

// A failing handler rolls back both its business write and the inbox
// record; the retry then applies once, and a redelivery has no effect.
func TestInboxHandlerFailureRollsBackBoth(t *testing.T) {
	pool, in := newInbox(t)
	ctx := context.Background()
	m := &ferry.Message{ID: ferry.NewID(), Key: []byte("c1"), Payload: []byte("{}")}
	fail := true
	h := in.Handler(func(ctx context.Context, tx pgx.Tx, m *ferry.Message) error {
		if err := addToTotal(ctx, tx, m); err != nil {
			return err
		}
		if fail {
			return errors.New("downstream check failed after the write")
		}
		return nil
	})
	if err := h(ctx, m); err == nil {
		t.Fatal("handler error swallowed")
	}
	if seen, _ := in.Seen(ctx, m.ID); seen || total(t, pool, "c1") != 0 {
		t.Fatalf("after the failure: seen=%v total=%d, want neither", seen, total(t, pool, "c1"))
	}
	fail = false
	for range 3 { // the retry, then two redeliveries
		if err := h(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if seen, _ := in.Seen(ctx, m.ID); !seen || total(t, pool, "c1") != 10 {
		t.Fatalf("after success and redeliveries: seen=%v total=%d, want the effect once", seen, total(t, pool, "c1"))
	}
}

// Records are per consumer: another consumer processes the same message.
func TestInboxRecordsArePerConsumer(t *testing.T) {
	pool, in := newInbox(t)
	ctx := context.Background()
	other, err := NewInbox(pool, "auditor", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	id := ferry.NewID()
	if err := in.Mark(ctx, id); err != nil {
		t.Fatal(err)
	}
	if seen, _ := other.Seen(ctx, id); seen {
		t.Fatal("another consumer's record counted")
	}
	if seen, _ := in.Seen(ctx, id); !seen {
		t.Fatal("record not seen")
	}
}

func TestInboxCleanupDropsExpiredRecords(t *testing.T) {
	pool, in := newInbox(t)
	ctx := context.Background()
	old, fresh := ferry.NewID(), ferry.NewID()
	in.Mark(ctx, old)
	in.Mark(ctx, fresh)
	if _, err := pool.Exec(ctx, "UPDATE ferry_inbox SET processed_at = now() - interval '2 hours' WHERE id = $1", old); err != nil {
		t.Fatal(err)
	}
	n, err := in.Cleanup(ctx)
	if err != nil || n != 1 {
		t.Fatalf("cleanup deleted %d (%v), want 1", n, err)
	}
	if seen, _ := in.Seen(ctx, old); seen {
		t.Fatal("expired record kept")
	}
	if seen, _ := in.Seen(ctx, fresh); !seen {
		t.Fatal("fresh record deleted")
	}
}

func TestNewInboxRejectsBadInput(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	if _, err := NewInbox(pool, "", time.Hour); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("empty name: %v", err)
	}
	if _, err := NewInbox(pool, "x", 0); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("zero TTL: %v", err)
	}
}
