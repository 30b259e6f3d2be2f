package kafka_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
)

// A partition's new owner reads the exactly-once markers and the DLQ up to
// their end before it handles a message. On Kafka the end a read_committed
// reader can reach is the last stable offset, which any open transaction
// holds back: another member's transaction that wrote a record before the
// previous owner's last one hid that record, and the new owner handled its
// input again (CI, conformance simulation seed 6: k1/7 handled by m5, then
// by m8, two outputs). Reading up to backend.StableEnd waits for the
// transactions open at the call to end, so everything committed before it
// is read.
func TestStableEndSeesWhatCommittedBehindAnOpenTransaction(t *testing.T) {
	ctx, c, be := clusterWithTopics(t, nil)

	// openBefore has another member write open to topic in a transaction
	// it leaves open, then the previous owner's record committed behind
	// it; the open one ends 300 ms after the returned
	// function is called, and the returned function reports whether it
	// had by the time the caller looks.
	openBefore := func(topic string, open, committed *ferry.Message) (start func(), ended func() bool) {
		t.Helper()
		other, err := kgo.NewClient(kgo.SeedBrokers(c.seeds()...), kgo.TransactionalID("other-"+topic),
			kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(other.Close)
		if err := other.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		rec := &kgo.Record{Key: open.Key, Value: open.Payload}
		for _, h := range open.Headers {
			rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
		}
		if err := other.ProduceSync(ctx, rec).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := be.PublishAndCommit(ctx, nil, []*ferry.Message{committed}); err != nil {
			t.Fatal(err)
		}
		var done atomic.Bool
		return func() {
				go func() {
					time.Sleep(300 * time.Millisecond)
					done.Store(true)
					if err := other.EndTransaction(ctx, kgo.TryCommit); err != nil {
						t.Error(err)
					}
				}()
			}, func() bool {
				return done.Load()
			}
	}

	t.Run("exactly-once markers", func(t *testing.T) {
		store, err := idempotency.OpenLog(ctx, be, "markers", time.Hour, 1000)
		if err != nil {
			t.Fatal(err)
		}
		id := ferry.NewID()
		start, ended := openBefore("markers", store.Marker(ferry.NewID()), store.Marker(id))
		start()
		next, err := idempotency.OpenLog(ctx, be, "markers", time.Hour, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if !ended() {
			t.Fatal("the new owner's store opened while a transaction written before it was open")
		}
		if seen, err := next.Seen(ctx, id); err != nil || !seen {
			t.Fatalf("the new owner's store does not know the marker committed before it opened: seen=%v err=%v", seen, err)
		}
		end, err := backend.StableEnd(ctx, be, backend.TopicPartition{Topic: "markers"})
		if err != nil || end != 4 {
			t.Fatalf("StableEnd = %d, %v; want 4 (two transactions of a record and a commit marker each)", end, err)
		}
	})

	t.Run("dlq index", func(t *testing.T) {
		if err := be.EnsureTopic(ctx, "in.dlq", 1); err != nil {
			t.Fatal(err)
		}
		deadLetter := func(key string) (*ferry.Message, ferry.ID) {
			in := &ferry.Message{ID: ferry.NewID(), Topic: "in", Key: []byte(key), Payload: []byte("x")}
			return dlq.NewEntry(in, "in.dlq", dlq.Failure{Group: "g", Attempts: 1, First: time.Now(), Last: time.Now(), Class: "permanent"}), in.ID
		}
		open, _ := deadLetter("other")
		committed, id := deadLetter("k")
		start, ended := openBefore("in.dlq", open, committed)
		x := dlq.NewIndex(be, "in.dlq")
		start()
		if err := x.CatchUp(ctx); err != nil {
			t.Fatal(err)
		}
		if !ended() {
			t.Fatal("the index caught up while a transaction written before it was open")
		}
		if !x.Known("g", id) {
			t.Fatal("the index does not know the dead letter committed before it caught up")
		}
	})
}

// A member that leaves while one of its transactions is running (a
// consumer whose Run was canceled: its handler's PublishAndCommit gave up
// waiting, the transaction went on) used to close its client under that
// transaction. The transaction then stayed open on the brokers until
// their timeout, holding the last stable offset of every partition it
// wrote (the exactly-once markers, the outputs): no other member could
// start a partition meanwhile. Leave now lets the running transaction
// end first.
func TestLeaveLetsTheRunningTransactionEnd(t *testing.T) {
	ctx, b := kafkaWithTopics(t, map[string]int{"in": 1, "out": 1})
	s, err := b.Join(ctx, "g", "m", []string{"in"})
	if err != nil {
		t.Fatal(err)
	}
	tp := waitAssigned(t, s, 1, 30*time.Second)[0]

	inTxn, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	kafka.SetAfterTxnProduce(b, func() {
		once.Do(func() {
			close(inTxn)
			<-release
		})
	})
	callCtx, giveUp := context.WithCancel(ctx)
	txnDone := make(chan error, 1)
	go func() {
		txnDone <- b.PublishAndCommit(callCtx, s, []*ferry.Message{{Topic: "out", Payload: []byte("x")}}, backend.Offset{TopicPartition: tp, Offset: 1})
	}()
	<-inTxn
	giveUp()
	<-txnDone // outcome unknown: the transaction goes on
	left := make(chan struct{})
	go func() { s.Leave(); close(left) }()
	// Leave waits for the transaction now; before, it closed the client
	// at once. Give it a second to show either way (the outcome checked
	// below does not depend on how long this takes).
	select {
	case <-left:
	case <-time.After(time.Second):
	}
	close(release)
	<-left
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	defer scancel()
	if _, err := backend.StableEnd(sctx, b, backend.TopicPartition{Topic: "out"}); err != nil {
		t.Fatalf("the left member's transaction is still open: %v", err)
	}
}
