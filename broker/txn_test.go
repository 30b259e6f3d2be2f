package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// values reads every record of topic's partitions from the start to the
// end (the high watermark at the call).
func values(t *testing.T, ctx context.Context, tb *testBroker, topic string) []string {
	t.Helper()
	_, end, err := tb.log.Bounds(topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	if end == 0 {
		return out
	}
	cl := tb.client(kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	for len(out) < int(end) {
		fs := cl.PollFetches(ctx)
		if err := fs.Err(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) { out = append(out, string(r.Value)) })
	}
	return out
}

// A transaction is in the log whole or not at all: an aborted one leaves
// nothing, a committed one all of its records, and a producer fenced by a
// new incarnation of its transactional ID cannot commit what it had open.
func TestTransactionsCommitWholeAbortLeaveNothingZombiesFenced(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)

	txnClient := func(id string) *kgo.Client {
		return tb.client(kgo.TransactionalID(id), kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	}
	produce := func(cl *kgo.Client, vals ...string) {
		t.Helper()
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte(v)}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := txnClient("tx")
	produce(a, "aborted-1", "aborted-2")
	if err := a.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	produce(a, "one", "two")
	if err := a.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if got := values(t, ctx, tb, "t"); !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("after an abort and a commit the topic holds %q, want [one two]", got)
	}

	// a goes on with a transaction; b takes over the transactional ID.
	produce(a, "zombie")
	b := txnClient("tx")
	if _, _, err := b.ProducerID(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.EndTransaction(ctx, kgo.TryCommit); err == nil {
		t.Fatal("the fenced producer committed its transaction")
	}
	produce(b, "three")
	if err := b.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if got := values(t, ctx, tb, "t"); !slices.Equal(got, []string{"one", "two", "three"}) {
		t.Fatalf("the topic holds %q, want [one two three]: the fenced producer's record is there", got)
	}
}
