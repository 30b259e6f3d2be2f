package consumer

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/internal/vfs"
)

// A dead letter replayed from the uncommitted window after a crash is not
// handled again: its outcome (dead-lettered) is durable in the DLQ, and
// the key stays parked behind it until it is redriven. The worker used to
// let the blocker itself through (its offset is not after the blocker's),
// so one input ended both dead-lettered and handled, and under
// exactly-once produced an output the DLQ said it never had (issue 16,
// defect 3).
func TestReplayedBlockerIsNotHandledAgain(t *testing.T) {
	ctx := context.Background()
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	l, err := commitlog.Open(ctx, "/data", commitlog.WithFS(ffs))
	if err != nil {
		t.Fatal(err)
	}
	b := embedded.New(l, embedded.WithSessionTimeout(2*time.Second))
	if err := b.EnsureTopic(ctx, "in", 1); err != nil {
		t.Fatal(err)
	}
	poison := func(ctx context.Context, m *ferry.Message) error {
		return ferry.Permanent(errors.New("poison"))
	}
	// No commit before the crash: everything is in the uncommitted window.
	_, stop := startConsumer(t, b, poison, WithCommitInterval(time.Hour))
	publish(t, b, "k/0")
	q := dlq.Open(b, "g.dlq")
	waitFor(t, "k/0 dead-lettered", func() bool {
		entries, _ := q.List(ctx, dlq.Filter{})
		return len(entries) == 1
	})
	img := ffs.Crash(nil) // power loss: the DLQ entry is durable, no offset was committed
	stop()
	b.Close()
	l.Close()

	l2, err := commitlog.Open(ctx, "/data", commitlog.WithFS(img))
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if _, ok := l2.CommittedOffset("g", "in", 0); ok {
		t.Fatal("setup: an offset was committed before the crash")
	}
	b2 := embedded.New(l2, embedded.WithSessionTimeout(2*time.Second))
	defer b2.Close()
	var mu sync.Mutex
	var handled []string
	startConsumer(t, b2, func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		handled = append(handled, string(m.Payload))
		mu.Unlock()
		return nil
	})
	publish(t, b2, "other/0")
	waitFor(t, "the partition caught up", func() bool {
		off, ok := l2.CommittedOffset("g", "in", 0)
		return ok && off == 2
	})
	mu.Lock()
	defer mu.Unlock()
	for _, p := range handled {
		if p == "k/0" {
			t.Fatalf("the dead letter k/0, replayed after the crash, was handled again (handled %v)", handled)
		}
	}
	entries, err := dlq.Open(b2, "g.dlq").List(ctx, dlq.Filter{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("DLQ after the replay: %d entries, %v; want k/0's one", len(entries), err)
	}
}
