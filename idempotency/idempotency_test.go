package idempotency

import (
	"context"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/vfs"
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
	s, err := OpenLog(ctx, l, "g.processed", time.Hour, 1000)
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
	s, err = OpenLog(ctx, l, "g.processed", time.Hour, 1000)
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
