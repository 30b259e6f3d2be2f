package consumer

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
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
