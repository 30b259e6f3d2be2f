package idempotency

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/memlog"
	"github.com/ferrymq/ferry/vfs"
)

func TestMemoryTTLAndBound(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	m := NewMemory(time.Minute, 3)
	m.now = func() time.Time { return now }
	a, b := ferry.NewID(), ferry.NewID()
	m.Mark(ctx, a)
	if ok, _ := m.Seen(ctx, a); !ok {
		t.Fatal("marked ID not seen")
	}
	if ok, _ := m.Seen(ctx, b); ok {
		t.Fatal("unmarked ID seen")
	}
	now = now.Add(2 * time.Minute)
	if ok, _ := m.Seen(ctx, a); ok {
		t.Fatal("ID seen after its TTL")
	}
	for i := 0; i < 5; i++ {
		m.Mark(ctx, ferry.NewID())
	}
	if len(m.seen) != 3 {
		t.Fatalf("memory store holds %d IDs, bound is 3", len(m.seen))
	}
}

func TestLogStoreSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	l, err := commitlog.Open(ctx, "/d", commitlog.WithFS(fs))
	if err != nil {
		t.Fatal(err)
	}
	s, err := OpenLog(ctx, embedded.New(l), "g.processed", time.Hour, 1000)
	if err != nil {
		t.Fatal(err)
	}
	id := ferry.NewID()
	if err := s.Mark(ctx, id); err != nil {
		t.Fatal(err)
	}
	l.Close()
	l, _ = commitlog.Open(ctx, "/d", commitlog.WithFS(fs))
	defer l.Close()
	s, err = OpenLog(ctx, embedded.New(l), "g.processed", time.Hour, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := s.Seen(ctx, id); !ok {
		t.Fatal("processed ID forgotten across reopen")
	}
	if ok, _ := s.Seen(ctx, ferry.NewID()); ok {
		t.Fatal("unknown ID seen")
	}
}

// Two stores on one topic (two processes of a group): an ID one marks is
// seen by the other after Sync.
func TestLogSyncSeesOtherWriters(t *testing.T) {
	ctx := context.Background()
	b, _ := memlog.Backend(t)
	a, err := OpenLog(ctx, b, "g.processed", time.Hour, 1000)
	if err != nil {
		t.Fatal(err)
	}
	other, err := OpenLog(ctx, b, "g.processed", time.Hour, 1000)
	if err != nil {
		t.Fatal(err)
	}
	id := ferry.NewID()
	if err := a.Mark(ctx, id); err != nil {
		t.Fatal(err)
	}
	if ok, _ := other.Seen(ctx, id); ok {
		t.Fatal("seen before Sync: the test proves nothing")
	}
	if err := other.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := other.Seen(ctx, id); !ok {
		t.Fatal("an ID marked by another store is not seen after Sync")
	}
	if _, err := OpenLog(ctx, b, "g.processed", 0, 1000); !errors.Is(err, ferry.ErrInvalidArgument) {
		t.Fatalf("zero TTL: %v, want ErrInvalidArgument", err)
	}
}
