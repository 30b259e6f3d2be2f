package embedded

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/vfs"
)

func newTestBackend(t *testing.T, opts ...Opt) *Backend {
	t.Helper()
	l, err := commitlog.Open(context.Background(), "/d", commitlog.WithFS(vfs.NewMemFS()), commitlog.WithDurability(commitlog.DurabilityNone))
	if err != nil {
		t.Fatal(err)
	}
	b := New(l, opts...)
	t.Cleanup(func() { b.Close(); l.Close() })
	if err := b.EnsureTopic(context.Background(), "t", 4); err != nil {
		t.Fatal(err)
	}
	return b
}

func next(t *testing.T, s backend.Session) []backend.TopicPartition {
	t.Helper()
	select {
	case tps := <-s.Assignments():
		return tps
	case <-time.After(10 * time.Second):
		t.Fatal("no assignment")
		return nil
	}
}

// A partition moves to a joining member only after its owner releases it,
// so it is never processed by two members at once.
func TestRebalanceWaitsForRelease(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	a, err := b.Join(ctx, "g", "a", []string{"t"})
	if err != nil {
		t.Fatal(err)
	}
	if got := next(t, a); len(got) != 4 {
		t.Fatalf("sole member got %v", got)
	}
	c, err := b.Join(ctx, "g", "c", []string{"t"})
	if err != nil {
		t.Fatal(err)
	}
	keep := next(t, a) // a is told to let two partitions go
	if len(keep) != 2 {
		t.Fatalf("a keeps %v", keep)
	}
	if got := next(t, c); len(got) != 0 {
		t.Fatalf("c got %v before a released anything", got)
	}
	// a still owns what it was asked to give up until it releases: its
	// commit there is accepted.
	moved := backend.TopicPartition{Topic: "t", Partition: 1}
	if err := b.Commit(ctx, a, backend.Offset{TopicPartition: moved, Offset: 1}); err != nil {
		t.Fatalf("commit before release: %v", err)
	}
	a.Release(moved)
	if got := next(t, c); len(got) != 1 || got[0] != moved {
		t.Fatalf("after release c got %v", got)
	}
	if err := b.Commit(ctx, a, backend.Offset{TopicPartition: moved, Offset: 2}); !errors.Is(err, backend.ErrFenced) {
		t.Fatalf("commit after release: %v", err)
	}
}

// A member that stops heartbeating loses its partitions and is fenced.
func TestSessionExpiryFencesMember(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t, WithSessionTimeout(50*time.Millisecond))
	a, _ := b.Join(ctx, "g", "a", []string{"t"})
	next(t, a)
	c, _ := b.Join(ctx, "g", "c", []string{"t"})
	next(t, c)
	// c heartbeats; a does not.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := c.Heartbeat(); err != nil {
			t.Fatal(err)
		}
		select {
		case tps := <-c.Assignments():
			if len(tps) == 4 {
				goto expired
			}
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("a's partitions never moved to c")
		}
	}
expired:
	if err := a.Heartbeat(); !errors.Is(err, backend.ErrSessionExpired) {
		t.Fatalf("heartbeat of an expired member: %v", err)
	}
	tp := backend.TopicPartition{Topic: "t", Partition: 0}
	if err := b.Commit(ctx, a, backend.Offset{TopicPartition: tp, Offset: 5}); !errors.Is(err, backend.ErrFenced) {
		t.Fatalf("commit by an expired member: %v", err)
	}
	// The channel may still hold the last assignment sent before expiry;
	// after it, it is closed.
	for i := 0; ; i++ {
		if _, ok := <-a.Assignments(); !ok {
			break
		}
		if i > 1 {
			t.Fatal("expired member's assignment channel still open")
		}
	}
}

func TestJoinRejectsBadInput(t *testing.T) {
	b := newTestBackend(t)
	if _, err := b.Join(context.Background(), "", "m", []string{"t"}); err == nil {
		t.Error("join without group accepted")
	}
	if _, err := b.Join(context.Background(), "g", "m", []string{"missing"}); err == nil {
		t.Error("join of a missing topic accepted")
	}
	b.Join(context.Background(), "g", "m", []string{"t"})
	if _, err := b.Join(context.Background(), "g", "m", []string{"t"}); err == nil {
		t.Error("duplicate member accepted")
	}
}

// A partition granted to a member and taken back before the member read
// its assignment is free at once: the member never heard of it, so it will
// never run or release it, and its desired owner must get it. The
// coordinator used to replace the unread assignment and keep the member
// as owner, so the partition stopped for the life of the group (40
// consumers starting together stopped short in 4 of 10 rounds; issue 16,
// defect 11).
func TestUnreadGrantTakenBackIsFree(t *testing.T) {
	ctx := context.Background()
	b := newTestBackend(t)
	a, err := b.Join(ctx, "g", "a", []string{"t"}) // a is granted all 4, unread
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.Join(ctx, "g", "c", []string{"t"}) // two of them move to c before a looks
	if err != nil {
		t.Fatal(err)
	}
	mine := next(t, a)
	theirs := next(t, c)
	if len(mine)+len(theirs) != 4 {
		t.Fatalf("a runs %v, c runs %v: %d of 4 partitions have a running owner", mine, theirs, len(mine)+len(theirs))
	}
}

// A topic created with a negative dedup window keeps none: the same ID
// published twice is written twice, and PublishDedup says neither was a
// duplicate.
func TestEnsureTopicConfigWithoutDedup(t *testing.T) {
	ctx := context.Background()
	l, err := commitlog.Open(ctx, "/d", commitlog.WithFS(vfs.NewMemFS()), commitlog.WithDurability(commitlog.DurabilityNone))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	b := New(l)
	if err := backend.EnsureTopicConfig(ctx, b, backend.TopicInfo{Name: "nodedup", Partitions: 1, DedupWindow: -1}); err != nil {
		t.Fatal(err)
	}
	id := ferry.NewID()
	for i := range 2 {
		dup, err := b.PublishDedup(ctx, &ferry.Message{ID: id, Topic: "nodedup", Payload: []byte("x")})
		if err != nil || dup[0] {
			t.Fatalf("publish %d: duplicate %v, %v", i, dup, err)
		}
	}
	if _, end, _ := b.Bounds(ctx, backend.TopicPartition{Topic: "nodedup"}); end != 2 {
		t.Fatalf("the partition holds %d messages, want 2", end)
	}
}
