package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
)

// A plain commit queued behind the member's transaction, whose partition
// then starts being revoked, goes out at once. Before the fix it waited
// for offsetLoop, which waited in the transaction's End for franz-go's
// transact-session lock, which the revocation callback held until the
// partition was released, which its worker did only after that commit
// returned: the member hung for good (seen in CI as the Kafka conformance
// suite's 10-minute timeout).
func TestCommitQueuedBeforeARevocationIsNotStuckBehindIt(t *testing.T) {
	ctx, be := kafkaWithTopics(t, map[string]int{"rq": 2, "rq-out": 1})
	a, err := be.Join(ctx, "rq-g", "a", []string{"rq"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Leave()
	both := waitAssigned(t, a, 2, 30*time.Second)

	// A transaction of a's, held after its produce.
	inTxn, endTxn := make(chan struct{}), make(chan struct{})
	kafka.SetAfterTxnProduce(be, func() { close(inTxn); <-endTxn })
	txnDone := make(chan error, 1)
	go func() {
		txnDone <- be.PublishAndCommit(ctx, a, []*ferry.Message{{Topic: "rq-out", Payload: []byte("x")}})
	}()
	<-inTxn
	// A commit of both partitions waits behind it (a worker's periodic
	// commit, or a consumer stopping).
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	commitDone := make(chan error, 1)
	go func() {
		commitDone <- be.Commit(cctx, a, backend.Offset{TopicPartition: both[0], Offset: 1}, backend.Offset{TopicPartition: both[1], Offset: 1})
	}()
	// b joins: a is told to let one partition go, and its callback waits
	// for the release.
	bm, err := be.Join(ctx, "rq-g", "b", []string{"rq"})
	if err != nil {
		t.Fatal(err)
	}
	defer bm.Leave()
	kept := waitAssigned(t, a, 1, 30*time.Second)[0]
	close(endTxn) // the transaction's End now waits for the callback
	// The worker of the revoked partition releases it once its commit
	// returned.
	err = <-commitDone
	a.Release(otherPartition(both, kept))
	if err != nil {
		t.Fatalf("the commit queued before the revocation: %v (it waited behind the transaction, which waits for the revocation, which waits for the commit)", err)
	}
	t.Logf("transaction: %v", <-txnDone)
	for _, tp := range both {
		if off, _, err := be.Committed(ctx, "rq-g", tp); err != nil || off != 1 {
			t.Fatalf("%v committed at %d (%v), want 1", tp, off, err)
		}
	}
}
