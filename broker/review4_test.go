package broker_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// franz-go's idempotent producer (5 in flight) across two restarts of the
// broker: every record acknowledged is in the log exactly once, and each
// partition's records in the order produced.
func TestReviewIdempotentProducerAcrossRestarts(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 3)
	addr := tb.addr
	cl := tb.client(kgo.DefaultProduceTopic("t"), kgo.MaxBufferedRecords(200), kgo.ProducerLinger(time.Millisecond),
		kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.RetryBackoffFn(func(int) time.Duration { return 20 * time.Millisecond }))
	const n = 6000
	var acked atomic.Int64
	var failed atomic.Int64
	for i := range n {
		if i == n/3 || i == 2*n/3 {
			tb.stop()
			tb.start(addr)
		}
		cl.Produce(ctx, &kgo.Record{Partition: int32(i % 3), Value: []byte(strconv.Itoa(i))}, func(r *kgo.Record, err error) {
			if err != nil {
				failed.Add(1)
				t.Errorf("record %s: %v", r.Value, err)
				return
			}
			acked.Add(1)
		})
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rd := tb.client(kgo.ConsumeTopics("t"), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	seen := map[int]int{}
	last := map[int32]int{0: -1, 1: -1, 2: -1}
	total := int64(0)
	for _, p := range []int32{0, 1, 2} {
		_, end, _ := tb.log.Bounds("t", p)
		total += int64(end)
	}
	for got := int64(0); got < total; {
		fs := rd.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			got++
			v, _ := strconv.Atoi(string(r.Value))
			seen[v]++
			if v <= last[r.Partition] {
				t.Errorf("partition %d: %d after %d", r.Partition, v, last[r.Partition])
			}
			last[r.Partition] = max(last[r.Partition], v)
		})
	}
	var dups []string
	for v, c := range seen {
		if c > 1 {
			dups = append(dups, fmt.Sprint(v))
		}
	}
	if len(dups) > 0 {
		t.Errorf("%d records written more than once: %s", len(dups), strings.Join(dups[:min(10, len(dups))], " "))
	}
	if len(seen) != n || total != acked.Load() {
		t.Errorf("log holds %d records (%d distinct), %d acked, %d failed", total, len(seen), acked.Load(), failed.Load())
	}
}
