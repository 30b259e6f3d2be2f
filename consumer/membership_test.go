package consumer

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/memlog"
)

// Stopping a revoked partition whose handler is slow must not stop the
// member's heartbeats: the loop that heartbeats used to wait for the
// revoked worker, the session expired, and the coordinator handed every
// partition of the member to others while its workers still ran (two
// members handled a never-revoked partition; issue 16, defect 4). Now the
// revoked partition stops on its own and is released when its worker has
// stopped; the member keeps its session and its other partitions.
func TestSlowRevocationKeepsTheSession(t *testing.T) {
	b := embedded.New(memlog.Open(t, commitlog.WithDurability(commitlog.DurabilityNone)), embedded.WithSessionTimeout(300*time.Millisecond))
	t.Cleanup(func() { b.Close() })
	if err := b.EnsureTopic(context.Background(), "in", 2); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	owners := map[int32]map[string]bool{} // partition -> members that handled it
	release := make(chan struct{})
	var once sync.Once
	slowStarted := make(chan struct{})
	handler := func(member string) Handler {
		return func(ctx context.Context, m *ferry.Message) error {
			mu.Lock()
			if owners[m.Partition] == nil {
				owners[m.Partition] = map[string]bool{}
			}
			owners[m.Partition][member] = true
			mu.Unlock()
			if string(m.Payload) == "slow" {
				once.Do(func() { close(slowStarted) })
				<-release // ignores ctx: a handler that cannot be interrupted
			}
			return nil
		}
	}
	opts := []Opt{WithHeartbeatInterval(50 * time.Millisecond), WithCommitInterval(10 * time.Millisecond)}
	a, stopA := startConsumer(t, b, handler("a"), append(opts, WithMember("a"))...)
	// One slow message on each partition: whichever a gives up is slow.
	for p := int32(0); p < 2; p++ {
		if err := b.Publish(context.Background(), &ferry.Message{Topic: "in", Partition: p, PinPartition: true, Payload: []byte("slow")}); err != nil {
			t.Fatal(err)
		}
	}
	<-slowStarted
	_, stopC := startConsumer(t, b, handler("c"), append(opts, WithMember("c"))...)
	// Longer than the session timeout, while a's revoked partition cannot
	// stop.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if err := a.Healthy(); err != nil {
			t.Fatalf("member a while its revoked partition stops: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	for p := int32(0); p < 2; p++ {
		if err := b.Publish(context.Background(), &ferry.Message{Topic: "in", Partition: p, PinPartition: true, Payload: []byte("after")}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "both partitions handled after the revocation", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(owners[0]) > 0 && len(owners[1]) > 0
	})
	stopC()
	stopA()
	mu.Lock()
	defer mu.Unlock()
	both := 0
	for _, m := range owners {
		if len(m) == 2 {
			both++
		}
	}
	if both > 1 {
		t.Fatalf("both partitions were handled by both members (only the revoked one may move): %v", owners)
	}
}
