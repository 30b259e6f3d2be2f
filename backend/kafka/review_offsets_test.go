package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/idempotency"
)

// otherPartition returns the partition of tps (two) that is not kept.
func otherPartition(tps []backend.TopicPartition, kept backend.TopicPartition) backend.TopicPartition {
	for _, tp := range tps {
		if tp != kept {
			return tp
		}
	}
	panic("no other partition")
}

// An adversarial review of the member's offsets (issue 16) wrote the
// tests of this file and review_bypass_test.go; each failed before its
// fix (session.rearm; commitPlain's lock).
//
// franz-go's GroupTransactSession wraps OnPartitionsRevoked: once a
// revocation set its `revoked` flag, every later revocation returns
// without calling ours until End resets the flag, and End runs only in a
// transaction. A member that only makes plain commits (no exactly-once),
// or that made no transaction since its last revocation, is therefore
// never told about its second revocation: the partition moves to another
// member while the old owner still lists it as its own, keeps working on
// it, and its commits are accepted (ownedOffsets sees it owned, and the
// request carries the member's new, valid generation). Fixed: after each
// revocation or loss the session runs an empty transaction (rearm).
func TestReviewOffsetsSecondRevocationIsNeverSeen(t *testing.T) { secondRevocation(t, false) }

// Control: the same with one transaction (no offsets) between the two
// revocations; End resets franz-go's flag, and the second revocation
// reaches onRevoked (this one passed before the fix too).
func TestReviewOffsetsSecondRevocationSeenAfterATransaction(t *testing.T) { secondRevocation(t, true) }

func secondRevocation(t *testing.T, txnBetween bool) {
	ctx, be := kafkaWithTopics(t, map[string]int{"sr": 2})
	a, err := be.Join(ctx, "sr-g", "a", []string{"sr"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Leave()
	both := waitAssigned(t, a, 2, 30*time.Second)

	// First revocation: b joins, a lets one partition go (the runtime
	// releases it once its worker stopped).
	bm, err := be.Join(ctx, "sr-g", "b", []string{"sr"})
	if err != nil {
		t.Fatal(err)
	}
	kept := waitAssigned(t, a, 1, 30*time.Second)[0]
	a.Release(otherPartition(both, kept))
	waitAssigned(t, bm, 1, 30*time.Second)
	// b leaves: a owns both again.
	bm.Leave()
	waitAssigned(t, a, 2, 30*time.Second)
	if txnBetween {
		if err := be.EnsureTopic(ctx, "sr-out", 1); err != nil {
			t.Fatal(err)
		}
		if err := be.PublishAndCommit(ctx, a, []*ferry.Message{{Topic: "sr-out", Payload: []byte("x")}}); err != nil {
			t.Logf("transaction between the revocations: %v", err)
		}
	}

	// Second revocation: c joins; one of a's partitions must move. With
	// the defect a is never told (its onRevoked is not called), and yet
	// the partition moves.
	cm, err := be.Join(ctx, "sr-g", "c", []string{"sr"})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Leave()
	// a is asked to let one partition go (or, with the defect, is
	// not): release it as the runtime would, while waiting for c's.
	var moved backend.TopicPartition
	told := false
	deadline := time.After(30 * time.Second)
wait:
	for {
		select {
		case tps := <-a.Assignments():
			if len(tps) == 1 {
				told = true
				a.Release(otherPartition(both, tps[0]))
			}
		case tps := <-cm.Assignments():
			if len(tps) == 1 {
				moved = tps[0]
				break wait
			}
		case <-deadline:
			t.Fatal("c was given no partition within 30s")
		}
	}
	t.Logf("c was given %v; a was told to let it go: %v", moved, told)
	// c, the new owner, commits; then a, the old owner, commits an older
	// offset for the partition it no longer owns.
	if err := be.Commit(ctx, cm, backend.Offset{TopicPartition: moved, Offset: 10}); err != nil {
		t.Fatal(err)
	}
	err = be.Commit(ctx, a, backend.Offset{TopicPartition: moved, Offset: 3})
	off, _, cerr := be.Committed(ctx, "sr-g", moved)
	if cerr != nil {
		t.Fatal(cerr)
	}
	if err == nil || !errors.Is(err, backend.ErrFenced) || off != 10 {
		t.Fatalf("a's commit of %v after it moved to c returned %v (want ErrFenced); the group's offset is now %d (c committed 10)", moved, err, off)
	}
}

// The same through the runtime: three plain consumers (no exactly-once).
// b joins and leaves, then c joins: a is never told to let c's partition
// go, so both a and c handle the messages published to it afterwards
// (the lease does not help: a is a live member heartbeating its current
// generation).
func TestReviewOffsetsRuntimeTwoOwnersAfterSecondRevocation(t *testing.T) {
	ctx, be := kafkaWithTopics(t, map[string]int{"sr2": 2})
	var mu sync.Mutex
	late := map[string]map[int32]int{} // member -> partition -> late messages handled
	handler := func(member string) consumer.Handler {
		return func(ctx context.Context, m *ferry.Message) error {
			if string(m.Payload) == "late" {
				mu.Lock()
				if late[member] == nil {
					late[member] = map[int32]int{}
				}
				late[member][m.Partition]++
				mu.Unlock()
			}
			return nil
		}
	}
	a, cc := throughSecondRevocation(t, ctx, func(member string) (*consumer.Consumer, error) {
		return consumer.New(be, "sr2-g", []string{"sr2"}, handler(member), consumer.WithMember(member),
			consumer.WithHeartbeatInterval(50*time.Millisecond), consumer.WithCommitInterval(50*time.Millisecond))
	})
	for range 10 {
		if err := be.Publish(ctx, &ferry.Message{Topic: "sr2", Payload: []byte("late")}); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until each late message was handled by its partition's owner
	// (c for its partition, a for the other); a second handling of c's by
	// a runs beside c's.
	owned := func() int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for p, k := range late["a"] {
			if late["c"][p] == 0 {
				n += k
			}
		}
		for _, k := range late["c"] {
			n += k
		}
		return n
	}
	for deadline := time.Now().Add(30 * time.Second); owned() < 10; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of 10 late messages handled by their partition's owner after 30 s", owned())
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("late messages handled: %v; a's partitions %d, c's %d", late, a.Stats().Partitions, cc.Stats().Partitions)
	for p := range late["c"] {
		if n := late["a"][p]; n > 0 {
			t.Fatalf("partition %d: c (its owner) handled %d late messages and a handled %d: two members work on one partition", p, late["c"][p], n)
		}
	}
}

// The same with exactly-once consumers: a and c both handle the inputs
// published to c's partition after the second revocation, and both
// commit their transactions (a's generation is valid and Kafka does not
// check that a TxnOffsetCommit's partitions are assigned to its member),
// so an input gets two outputs.
func TestReviewOffsetsExactlyOnceTwoOutputsAfterSecondRevocation(t *testing.T) {
	ctx, be := kafkaWithTopics(t, map[string]int{"in": 2, "out": 2})
	a, cc := throughSecondRevocation(t, ctx, func(member string) (*consumer.Consumer, error) {
		store, err := idempotency.OpenLog(ctx, be, "g.processed", time.Hour, 100000)
		if err != nil {
			return nil, err
		}
		h := func(ctx context.Context, m *ferry.Message) error {
			time.Sleep(20 * time.Millisecond)
			return consumer.Emit(ctx, &ferry.Message{Topic: "out", Key: m.Key, Payload: []byte(m.ID.String())})
		}
		return consumer.New(be, "g", []string{"in"}, h, consumer.WithMember(member), consumer.WithExactlyOnce(store),
			consumer.WithHeartbeatInterval(50*time.Millisecond), consumer.WithCommitInterval(50*time.Millisecond))
	})
	const inputs = 40
	var batch []*ferry.Message
	for i := range inputs {
		batch = append(batch, &ferry.Message{Topic: "in", Key: fmt.Appendf(nil, "k%d", i), Payload: fmt.Appendf(nil, "%d", i)})
	}
	if err := be.Publish(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	var outs map[string]int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		outs = readOutputs(t, be)
		if len(outs) >= inputs || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(time.Second) // the bound of an absence check: a second owner's transactions would land by then
	outs = readOutputs(t, be)
	dups := 0
	for _, n := range outs {
		if n > 1 {
			dups++
		}
	}
	t.Logf("a's partitions %d, c's %d", a.Stats().Partitions, cc.Stats().Partitions)
	if len(outs) != inputs || dups > 0 {
		t.Fatalf("%d of %d inputs have outputs, %d of them more than one", len(outs), inputs, dups)
	}
}

// throughSecondRevocation runs the consumers newMember makes through two
// rebalances of a 2-partition topic: a alone, then b (a lets one
// partition go), b stops (a takes both back), then c joins (a's second
// revocation). It returns a and c once each runs one partition; both
// stop when t ends.
func throughSecondRevocation(t *testing.T, ctx context.Context, newMember func(member string) (*consumer.Consumer, error)) (a, c *consumer.Consumer) {
	t.Helper()
	run := func(member string) (*consumer.Consumer, func()) {
		cons, err := newMember(member)
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- cons.Run(rctx) }()
		var once sync.Once
		stop := func() { once.Do(func() { cancel(); <-done }) }
		t.Cleanup(stop)
		return cons, stop
	}
	waitParts := func(cons *consumer.Consumer, name string, n int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); cons.Stats().Partitions != n; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s has %d partitions, want %d", name, cons.Stats().Partitions, n)
			}
		}
	}
	a, _ = run("a")
	waitParts(a, "a", 2)
	b, stopB := run("b")
	waitParts(b, "b", 1)
	waitParts(a, "a", 1)
	stopB()
	waitParts(a, "a", 2)
	c, _ = run("c")
	waitParts(c, "c", 1)
	waitParts(a, "a", 1) // it was told to let c's partition go (before rearm it never was)
	return a, c
}

// kafkaWithTopics starts a cluster and a backend on it (session timeout
// 1 s) with topics (name: partitions) created; everything ends with t,
// and the context after two minutes.
func kafkaWithTopics(t *testing.T, topics map[string]int) (context.Context, *kafka.Backend) {
	t.Helper()
	ctx, _, be := clusterWithTopics(t, topics)
	return ctx, be
}

// clusterWithTopics is kafkaWithTopics with the cluster, for tests that
// also reach it with clients of their own.
func clusterWithTopics(t *testing.T, topics map[string]int) (context.Context, *cluster, *kafka.Backend) {
	t.Helper()
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	be, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	for topic, n := range topics {
		if err := be.EnsureTopic(ctx, topic, n); err != nil {
			t.Fatal(err)
		}
	}
	return ctx, c, be
}
