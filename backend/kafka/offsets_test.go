package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
)

// A plain commit made while one of the member's transactions is open
// (its records written, its offsets not yet committed) used to land
// first; the transaction then landed its older offset and moved the group
// back (issue 16's suspicion that the committed offset can go backwards,
// confirmed on Kafka). A member's offsets now have one writer that runs
// them in turn and never sends one older than what landed.
func TestCommitDuringTransactionNeverMovesTheGroupBack(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := kafka.New(ctx, c.seeds())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, topic := range []string{"in", "out"} {
		if err := b.EnsureTopic(ctx, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	s, err := b.Join(ctx, "g", "m", []string{"in"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Leave()
	tp := waitAssigned(t, s, 1, 30*time.Second)[0]

	inTxn, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	kafka.SetAfterTxnProduce(b, func() {
		once.Do(func() {
			close(inTxn)
			<-release
		})
	})
	txnDone := make(chan error, 1)
	go func() {
		txnDone <- b.PublishAndCommit(ctx, s, []*ferry.Message{{Topic: "out", Payload: []byte("x")}}, backend.Offset{TopicPartition: tp, Offset: 5})
	}()
	<-inTxn
	commitDone := make(chan error, 1)
	go func() { commitDone <- b.Commit(ctx, s, backend.Offset{TopicPartition: tp, Offset: 10}) }()
	// The commit waits for the open transaction now. Before, it landed
	// at once; give it a second to show either way (the outcome checked
	// below does not depend on how long this takes).
	select {
	case err := <-commitDone:
		commitDone <- err
	case <-time.After(time.Second):
	}
	close(release)
	if err := <-txnDone; err != nil {
		t.Fatal(err)
	}
	if err := <-commitDone; err != nil {
		t.Fatal(err)
	}
	if off, ok, err := b.Committed(ctx, "g", tp); err != nil || !ok || off != 10 {
		t.Fatalf("committed %d (found %v, %v) after a commit of 10 made while a transaction carrying 5 was open: the group went back", off, ok, err)
	}
}
