package consumer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// fenceOnce (from the flaky-test hunt of issue 21) fails the first commit after armed with backend.ErrFenced,
// as the Kafka backend does for a commit that meets REBALANCE_IN_PROGRESS
// or ILLEGAL_GENERATION, while the session keeps its partition (a
// cooperative rebalance in which the member keeps what it had).
type fenceOnce struct {
	backend.Backend
	armed atomic.Bool
}

func (f *fenceOnce) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	if f.armed.CompareAndSwap(true, false) {
		return fmt.Errorf("commit during a rebalance: %w", backend.ErrFenced)
	}
	return f.Backend.Commit(ctx, s, offsets...)
}

// A commit refused as fenced while the member keeps the partition must
// not stop the partition for good: the messages published after it are
// handled all the same.
func TestFencedCommitOfAKeptPartitionDoesNotStopIt(t *testing.T) {
	b := &fenceOnce{Backend: newBackend(t)}
	ctx := context.Background()
	if err := b.EnsureTopic(ctx, "in", 1); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handled := 0
	c, err := New(b, "g", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		mu.Lock()
		handled++
		mu.Unlock()
		return nil
	}, WithCommitInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	defer func() { cancel(); <-done }()
	count := func() int { mu.Lock(); defer mu.Unlock(); return handled }
	wait := func(n int) bool {
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if count() >= n {
				return true
			}
		}
		return false
	}
	publish := func() {
		if err := b.Publish(ctx, &ferry.Message{Topic: "in", Key: []byte("k"), Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	publish()
	if !wait(1) {
		t.Fatal("the first message was not handled")
	}
	b.armed.Store(true)
	publish() // its commit is the fenced one
	if !wait(2) {
		t.Fatal("the second message was not handled")
	}
	for b.armed.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	publish()
	if !wait(3) {
		t.Fatalf("after one commit refused as fenced (the member kept the partition), a message published later was not handled in 10 s: %d of 3 handled, stats %+v", count(), c.Stats())
	}
}
