package consumer

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/idempotency"
)

// eoGate holds the first exactly-once batch that carries offset hold
// until a plain commit past it has landed, and records every offset that
// landed, in landing order.
type eoGate struct {
	backend.Backend
	tx     backend.Transactional
	mu     sync.Mutex
	held   bool
	passed chan struct{} // closed when a plain commit past the held offset landed
	landed []uint64
}

// committed is the group's committed offset of in/0 now.
func (g *eoGate) committed(ctx context.Context) uint64 {
	off, _, _ := g.Backend.Committed(ctx, "g", backend.TopicPartition{Topic: "in"})
	return off
}

func (g *eoGate) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	err := g.Backend.Commit(ctx, s, offsets...)
	if err == nil && len(offsets) == 1 && offsets[0].Topic == "in" {
		g.mu.Lock()
		g.landed = append(g.landed, g.committed(ctx))
		if g.held && offsets[0].Offset > 0 {
			select {
			case <-g.passed:
			default:
				close(g.passed)
			}
		}
		g.mu.Unlock()
	}
	return err
}

func (g *eoGate) StableEnd(ctx context.Context, tp backend.TopicPartition) (uint64, error) {
	return g.tx.StableEnd(ctx, tp)
}

func (g *eoGate) PublishAndCommit(ctx context.Context, s backend.Session, msgs []*ferry.Message, offsets ...backend.Offset) error {
	g.mu.Lock()
	hold := !g.held && len(offsets) == 1 && offsets[0].Topic == "in" && len(msgs) > 0 && string(msgs[0].Payload) == "out of y"
	if hold {
		g.held = true
	}
	g.mu.Unlock()
	if hold {
		select {
		case <-g.passed:
		case <-time.After(5 * time.Second): // no plain commit went past: the interleaving cannot happen
		}
	}
	err := g.tx.PublishAndCommit(ctx, s, msgs, offsets...)
	if err == nil && len(offsets) == 1 && offsets[0].Topic == "in" {
		g.mu.Lock()
		g.landed = append(g.landed, g.committed(ctx))
		g.mu.Unlock()
	}
	return err
}

// Suspicion (issue 16): under exactly-once, an output batch captures the
// partition's watermark before it is queued, and can land after a newer
// plain commit: the group's committed offset goes backwards. x/0 (offset
// 0) is slow; y/0 (offset 1) is handled at once and its batch captures
// watermark 0, then is held until x/0 finished and the commit loop
// committed 1; the held batch then lands with 0.
func TestExactlyOnceCommittedOffsetNeverGoesBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inner := newBackend(t)
		g := &eoGate{Backend: inner, tx: inner, passed: make(chan struct{})}
		ctx := context.Background()
		if err := g.EnsureTopic(ctx, "in", 1); err != nil {
			t.Fatal(err)
		}
		store, err := idempotency.OpenLog(ctx, inner, "g.processed", time.Hour, 1000)
		if err != nil {
			t.Fatal(err)
		}
		handler := func(ctx context.Context, m *ferry.Message) error {
			if string(m.Key) == "x" {
				time.Sleep(100 * time.Millisecond) // finishes while y's batch is in flight
			}
			return Emit(ctx, &ferry.Message{Topic: "out", Payload: []byte("out of " + string(m.Key))})
		}
		if err := inner.EnsureTopic(ctx, "out", 1); err != nil {
			t.Fatal(err)
		}
		_, stop := startConsumer(t, g, handler, WithExactlyOnce(store), WithConcurrency(2))
		publish(t, inner, "x/0", "y/0")
		time.Sleep(time.Second)
		stop()
		g.mu.Lock()
		defer g.mu.Unlock()
		if !g.held {
			t.Fatal("y's exactly-once batch never came")
		}
		for i := 1; i < len(g.landed); i++ {
			if g.landed[i] < g.landed[i-1] {
				t.Fatalf("the committed offset went back: offsets landed in order %v", g.landed)
			}
		}
		if off, _, _ := inner.Committed(ctx, "g", backend.TopicPartition{Topic: "in"}); off != 2 {
			t.Fatalf("committed %d after both were handled, want 2 (landed %v)", off, g.landed)
		}
	})
}
