package consumer

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry/dlq"
)

func TestReview16cHeldMaxParkedOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "a/0", "b/0", "c/0")
		c, _ := startConsumer(t, b, s.handle, WithMaxParkedKeys(1))
		publish(t, b, "a/0", "a/1", "b/0", "b/1", "c/0", "c/1", "x/0")
		waitDead(t, q, 2)
		// The DLQ lists an entry a moment before the worker has followed
		// its own write and counted it.
		waitFor(t, "one parked key with one parked message", func() bool {
			st := c.Stats()
			return st.ParkedKeys == 1 && st.ParkedMessages == 1
		})
		s.set(s.poison, false, "a/0", "b/0", "c/0")
		// Redrive each key that is dead until all are handled: a key that
		// waited for room to park is tried again once room frees, and may
		// then succeed without ever reaching the DLQ.
		waitFor(t, "every message handled", func() bool {
			if es, _ := q.List(context.Background(), dlq.Filter{State: dlq.StateDead}); len(es) > 0 {
				redriveKey(t, q, string(es[0].Original.Key))
			}
			return len(s.handled()) >= 7
		})
		time.Sleep(300 * time.Millisecond)
		got := s.handled()
		pos := map[string]int{}
		for i, p := range got {
			pos[p] = i
		}
		if len(got) != 7 || pos["a/0"] > pos["a/1"] || pos["b/0"] > pos["b/1"] || pos["c/0"] > pos["c/1"] {
			t.Fatalf("handled %v", got)
		}
	})
}

func TestReview16cHeldKeyless(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "/0", "/1", "/2")
		startConsumer(t, b, s.handle)
		publish(t, b, "/0", "/1", "/2")
		waitDead(t, q, 3)
		s.set(s.poison, false, "/0", "/2")
		if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		s.set(s.poison, false, "/1")
		if _, err := q.Redrive(context.Background(), dlq.RedriveOpts{}); err != nil {
			t.Fatal(err)
		}
		// Messages without a key have no order to keep: each once, in any order.
		waitFor(t, "every keyless message handled", func() bool { return len(s.handled()) >= 3 })
		time.Sleep(300 * time.Millisecond)
		if got := s.handled(); len(got) != 3 || !slices.Contains(got, "/0") || !slices.Contains(got, "/1") || !slices.Contains(got, "/2") {
			t.Fatalf("handled %v, want /0 /1 /2 once each", got)
		}
	})
}

func TestReview16cHeldRedriveFailRedriveAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		s := newScript()
		s.set(s.poison, true, "k/0")
		startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1")
		waitDead(t, q, 2)
		redriveKey(t, q, "k")
		waitFor(t, "failed again", func() bool { return s.startedCount("k/0") == 2 })
		waitFor(t, "dead again", func() bool {
			es, _ := q.List(context.Background(), dlq.Filter{State: dlq.StateDead})
			return len(es) == 1
		})
		redriveKey(t, q, "k")
		waitFor(t, "failed a third time", func() bool { return s.startedCount("k/0") == 3 })
		s.set(s.poison, false, "k/0")
		waitFor(t, "dead again", func() bool {
			es, _ := q.List(context.Background(), dlq.Filter{State: dlq.StateDead})
			return len(es) == 1
		})
		redriveKey(t, q, "k")
		s.wantHandled(t, "k/0", "k/1")
	})
}

func TestReview16cHeldTwoMembersAfterOfflineRedrive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b, q := setupIn(t)
		if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
			t.Fatal(err)
		}
		s := newScript()
		s.set(s.poison, true, "k/0")
		_, stop := startConsumer(t, b, s.handle)
		publish(t, b, "k/0", "k/1", "k/2")
		waitDead(t, q, 3)
		stop()
		s.set(s.poison, false, "k/0")
		redriveKey(t, q, "k")
		publish(t, b, "k/3")
		startConsumer(t, b, s.handle, WithMember("m1"))
		startConsumer(t, b, s.handle, WithMember("m2"))
		s.wantHandled(t, "k/0", "k/1", "k/2", "k/3")
	})
}
