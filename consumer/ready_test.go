package consumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

// Ready closes once the consumer runs its partitions, and Stats keeps the
// parked figures after Run returned (they used to read all zeros).
func TestReadyAndStatsAfterRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBackend(t)
		if err := b.EnsureTopic(context.Background(), "in", 2); err != nil {
			t.Fatal(err)
		}
		h := func(ctx context.Context, m *ferry.Message) error {
			if string(m.Payload) == "k/0" {
				return ferry.Permanent(context.Canceled)
			}
			return nil
		}
		c, stop := startConsumer(t, b, h)
		select {
		case <-c.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("Ready did not close")
		}
		if st := c.Stats(); st.Partitions != 2 {
			t.Fatalf("after Ready: %d partitions running, want 2", st.Partitions)
		}
		publish(t, b, "k/0", "k/1", "k/2")
		for c.Stats().ParkedMessages < 2 {
			time.Sleep(10 * time.Millisecond)
		}
		stop()
		if st := c.Stats(); st.ParkedKeys != 1 || st.ParkedMessages != 2 || st.Partitions != 0 {
			t.Fatalf("Stats after Run returned: %+v, want 1 parked key with 2 messages behind it", st)
		}
	})
}

// WithStart: a new group begins at the end or at a time, and the position
// chosen holds across a restart before anything was handled (committed
// with the first commit, not chosen again).
func TestStartLatestAndAt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBackend(t)
		if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
			t.Fatal(err)
		}
		publish(t, b, "old/0", "old/1")
		time.Sleep(time.Minute)
		mark := time.Now()
		publish(t, b, "mid/0")
		var mu sync.Mutex
		var got []string
		h := func(ctx context.Context, m *ferry.Message) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, string(m.Payload))
			return nil
		}

		c, stop := startConsumer(t, b, h, WithStart(StartLatest))
		<-c.Ready()
		time.Sleep(time.Second) // a few commit intervals: the chosen start is committed
		synctest.Wait()
		stop()
		publish(t, b, "new/0")
		c, stop = startConsumer(t, b, h, WithStart(StartLatest))
		<-c.Ready()
		time.Sleep(time.Second)
		synctest.Wait()
		stop()
		if len(got) != 1 || got[0] != "new/0" {
			t.Fatalf("StartLatest, restarted before handling anything: handled %v, want [new/0]", got)
		}

		got = nil
		c2, err := New(b, "g2", []string{"in"}, h, WithStart(StartAt(mark)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- c2.Run(ctx) }()
		<-c2.Ready()
		time.Sleep(time.Second)
		synctest.Wait()
		cancel()
		<-done
		slices.Sort(got) // two keys: no order between them
		if len(got) != 2 || got[0] != "mid/0" || got[1] != "new/0" {
			t.Fatalf("StartAt(%v): handled %v, want [mid/0 new/0]", mark, got)
		}
	})
}

// retry.UnlimitedAttempts retries a transient failure until it works:
// 1,500 failures (past the 1000 a number may say) and no dead letter.
func TestUnlimitedAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := newBackend(t)
		if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		calls, handled := 0, 0
		h := func(ctx context.Context, m *ferry.Message) error {
			mu.Lock()
			defer mu.Unlock()
			if calls++; calls <= 1500 {
				return errors.New("dependency down")
			}
			handled++
			return nil
		}
		c, stop := startConsumer(t, b, h, WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond, MaxAttempts: retry.UnlimitedAttempts}), WithDurableRetry(time.Hour))
		<-c.Ready()
		publish(t, b, "k/0")
		for {
			mu.Lock()
			h := handled
			mu.Unlock()
			if h == 1 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		stop()
		if _, end, _ := b.Bounds(context.Background(), backend.TopicPartition{Topic: "g.dlq"}); end != 0 {
			t.Fatalf("%d dead letters, want none", end)
		}
		if _, err := New(b, "g", []string{"in"}, h, WithRetryPolicy(retry.Policy{MaxAttempts: 1001})); err == nil {
			t.Fatal("MaxAttempts 1001 accepted")
		}
	})
}

// RunUntilCaughtUp handles what the partitions hold, requested dead
// letters included, commits, and returns.
func TestRunUntilCaughtUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		b := newBackend(t)
		if err := b.EnsureTopic(ctx, "in", 2); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		poison := map[string]bool{"k3/0": true}
		handled := map[string]int{}
		h := func(ctx context.Context, m *ferry.Message) error {
			mu.Lock()
			defer mu.Unlock()
			if poison[string(m.Payload)] {
				return ferry.Permanent(errors.New("bad"))
			}
			handled[string(m.Payload)]++
			return nil
		}
		for i := 0; i < 50; i++ {
			publish(t, b, fmt.Sprintf("k%d/0", i%7), fmt.Sprintf("k%d/1", i%7))
		}
		run := func() {
			t.Helper()
			// The first fetches take a while: the partitions have started,
			// and hold nothing in flight, well before they caught up.
			c, err := New(slowFetch{b}, "g", []string{"in"}, h)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.RunUntilCaughtUp(ctx); err != nil {
				t.Fatal(err)
			}
		}
		run()
		mu.Lock()
		n := 0
		for _, c := range handled {
			n += c
		}
		mu.Unlock()
		// k3's messages (14 of them) wait behind its dead first one.
		if n != 100-14 {
			t.Fatalf("%d handled, want 86", n)
		}
		for p := int32(0); p < 2; p++ {
			tp := backend.TopicPartition{Topic: "in", Partition: p}
			off, _, _ := b.Committed(ctx, "g", tp)
			if _, end, _ := b.Bounds(ctx, tp); off != end {
				t.Fatalf("partition %d committed %d, end %d", p, off, end)
			}
		}
		mu.Lock()
		delete(poison, "k3/0")
		mu.Unlock()
		if _, err := dlq.Open(b, "g.dlq").Redrive(ctx, dlq.RedriveOpts{}); err != nil {
			t.Fatal(err)
		}
		run()
		mu.Lock()
		defer mu.Unlock()
		if handled["k3/0"] != 7 || handled["k3/1"] != 7 {
			t.Fatalf("after the redrive: k3/0 %d, k3/1 %d handled, want 7 each (k3 was published 7 times)", handled["k3/0"], handled["k3/1"])
		}
	})
}

// slowFetch delays the first fetch of each partition of "in" by 50 ms.
type slowFetch struct{ *embedded.Backend }

func (s slowFetch) Fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	if tp.Topic == "in" && offset == 0 {
		time.Sleep(50 * time.Millisecond)
	}
	return s.Backend.Fetch(ctx, tp, offset, max)
}
