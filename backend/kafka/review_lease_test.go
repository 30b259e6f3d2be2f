package kafka_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/consumer"
)

// An adversarial review of the session lease (issue 16, defect 17) wrote
// these three; each failed before its fix: Leave and Run hung while
// onRevoked waited with no deadline (Leave now ends the wait), and the
// lease outlived the rebalance timeout (REBALANCE_IN_PROGRESS no longer
// renews it, and it spans the shorter of the session and rebalance
// timeouts).

// nextAssigned returns the session's next assignment or fails after d.
func nextAssigned(t *testing.T, s backend.Session, d time.Duration) []backend.TopicPartition {
	t.Helper()
	select {
	case tps, ok := <-s.Assignments():
		if !ok {
			t.Fatalf("%s: assignments closed", s.Member())
		}
		return tps
	case <-time.After(d):
		t.Fatalf("%s: no assignment within %v", s.Member(), d)
	}
	return nil
}

func waitAssigned(t *testing.T, s backend.Session, n int, d time.Duration) []backend.TopicPartition {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		tps := nextAssigned(t, s, time.Until(deadline))
		if len(tps) == n {
			return tps
		}
	}
}

func hasPartition(tps []backend.TopicPartition, tp backend.TopicPartition) bool {
	for _, x := range tps {
		if x == tp {
			return true
		}
	}
	return false
}

// Leave must end the session even when a revoked partition was never
// released (the consumer's stopAll on shutdown, for one, receives the
// stopped worker but does not call Release). onRevoked no longer has a
// deadline: it waits for s.released or the client's context, which
// Client.Close cancels only after the group was left, and leaving waits
// for the manage goroutine, which sits in onRevoked: Close never returns.
func TestReviewLeaseLeaveHangsWithUnreleasedRevocation(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	b, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.EnsureTopic(ctx, "lh", 2); err != nil {
		t.Fatal(err)
	}
	a, err := b.Join(ctx, "lh-g", "a", []string{"lh"})
	if err != nil {
		t.Fatal(err)
	}
	waitAssigned(t, a, 2, 30*time.Second)
	bm, err := b.Join(ctx, "lh-g", "b", []string{"lh"})
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Leave()
	// a is told to let one go; it never releases it (its worker is
	// still stopping when the runtime shuts down).
	waitAssigned(t, a, 1, 30*time.Second)
	left := make(chan struct{})
	start := time.Now()
	go func() { a.Leave(); close(left) }()
	select {
	case <-left:
		t.Logf("Leave returned after %v", time.Since(start))
	case <-time.After(30 * time.Second):
		t.Fatalf("Leave has not returned after 30s (session timeout 1s, LeaveGroup's own timeout 10s): onRevoked waits with no deadline and Client.Close waits for it")
	}
}

// The lease must not outlast the member's hold on its partitions. Kafka
// removes a member that does not rejoin a rebalance within the rebalance
// timeout whatever its heartbeats; leaseLoop counts REBALANCE_IN_PROGRESS
// answers as renewals for a full session timeout. Member a is stuck in
// onRevoked (a partition it was told to let go has not been released: a
// slow handler), a third member joins, the rebalance times a out and
// hands its kept partition to another member, and a's lease still covers
// that moment: a's worker for the kept partition goes on starting
// handlers beside the new owner.
func TestReviewLeaseLeaseOutlastsRebalanceTimeout(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	const session = 4 * time.Second
	b, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(session),
		kafka.WithClientOptions(kgo.RebalanceTimeout(1500*time.Millisecond)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.EnsureTopic(ctx, "lr", 2); err != nil {
		t.Fatal(err)
	}
	a, err := b.Join(ctx, "lr-g", "a", []string{"lr"})
	if err != nil {
		t.Fatal(err)
	}
	waitAssigned(t, a, 2, 30*time.Second)
	bm, err := b.Join(ctx, "lr-g", "b", []string{"lr"})
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Leave()
	kept := waitAssigned(t, a, 1, 30*time.Second)[0] // the other is revoking, never released
	cm, err := b.Join(ctx, "lr-g", "c", []string{"lr"})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Leave()
	// Watch b and c until one of them is given a's kept partition.
	got := make(chan time.Time, 2)
	for _, s := range []backend.Session{bm, cm} {
		go func() {
			for tps := range s.Assignments() {
				if hasPartition(tps, kept) {
					got <- time.Now()
					return
				}
			}
		}()
	}
	var at time.Time
	select {
	case at = <-got:
	case <-time.After(60 * time.Second):
		t.Skip("the kept partition never moved (rebalance timeout not enforced here)")
	}
	lease := a.Lease()
	if lease.After(at) {
		t.Fatalf("another member was given %v at %v while a's lease runs until %v (%v later): a's workers may start handlers on it beside the new owner",
			kept, at.Format("15:04:05.000"), lease.Format("15:04:05.000"), lease.Sub(at))
	}
}

// A consumer stopped while one of its partitions is being revoked (its
// worker waiting for a handler that finishes a moment later) must still
// return from Run. stopAll receives the stopped worker but does not
// Release the partition, and Leave then waits forever on onRevoked (see
// TestReviewLeaseLeaveHangsWithUnreleasedRevocation): Run never returns.
func TestReviewLeaseRunHangsWhenStoppedDuringRevocation(t *testing.T) {
	c := startCluster(t)
	ctx := context.Background()
	b, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.EnsureTopic(ctx, "rh", 2); err != nil {
		t.Fatal(err)
	}
	for p := range 2 {
		if err := b.Publish(ctx, &ferry.Message{Topic: "rh", Partition: int32(p), Key: []byte{byte('a' + p)}}); err != nil {
			t.Fatal(err)
		}
	}
	unblock := make(chan struct{})
	var running atomic.Int32
	h := func(ctx context.Context, m *ferry.Message) error {
		running.Add(1)
		<-unblock // ignores ctx for a moment, as slow work does
		return nil
	}
	cons, err := consumer.New(b, "rh-g", []string{"rh"}, h, consumer.WithMember("a"),
		consumer.WithHeartbeatInterval(100*time.Millisecond), consumer.WithCommitInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cons.Run(rctx) }()
	for deadline := time.Now().Add(30 * time.Second); running.Load() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("handlers did not start on both partitions")
		}
	}
	other, err := b.Join(ctx, "rh-g", "b", []string{"rh"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Leave()
	for deadline := time.Now().Add(30 * time.Second); cons.Stats().Partitions != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no partition was revoked from a")
		}
	}
	stop()                            // shut down while a partition is stopping
	time.Sleep(50 * time.Millisecond) // Run is in stopAll
	close(unblock)
	select {
	case err := <-done:
		t.Logf("Run returned %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Run has not returned 30s after it was stopped (handlers done): Leave hangs on the unreleased revocation")
	}
}
