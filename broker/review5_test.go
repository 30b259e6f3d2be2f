package broker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// franz-go with a larger buffer and 100000 empty records: held (its
// batches stayed under 65534 records here). The raw test below shows
// the limit a client that packs more (librdkafka batch.num.messages,
// the Java client with a large batch.size) runs into.
func TestReviewBatchOfManySmallRecordsIsRefused(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client(kgo.DefaultProduceTopic("t"), kgo.MaxBufferedRecords(200_000), kgo.ProducerLinger(500*time.Millisecond),
		kgo.ProducerBatchCompression(kgo.NoCompression()))
	const n = 100_000
	var failed atomic.Int64
	var firstErr atomic.Value
	for range n {
		cl.Produce(ctx, &kgo.Record{Value: []byte{}}, func(r *kgo.Record, err error) {
			if err != nil {
				if failed.Add(1) == 1 {
					firstErr.Store(err)
				}
			}
		})
	}
	cl.Flush(ctx)
	if f := failed.Load(); f > 0 {
		t.Fatalf("%d of %d records failed: %v", f, n, firstErr.Load())
	}
}

// The same with one raw batch of 70000 empty records (about 600 KB,
// within every Kafka bound).
func TestReviewRawBatchOf70000RecordsIsRefused(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	vals := make([]string, 70000)
	r := produceBatch(t, ctx, cl, "t", -1, -1, -1, vals...)
	if r.ErrorCode != 0 {
		t.Fatalf("a 70000-record batch: %v %s", kerr.ErrorForCode(r.ErrorCode), deref(r.ErrorMessage))
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
