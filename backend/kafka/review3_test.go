package kafka_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
)

// cancelOnPoll cancels the armed context as soon as a poll hands records
// to the caller: the fetch's context ends just after its client polled
// (a worker stopping mid-fetch, at a revocation).
type cancelOnPoll struct {
	mu     sync.Mutex
	cancel context.CancelFunc
}

func (h *cancelOnPoll) arm(c context.CancelFunc) { h.mu.Lock(); h.cancel = c; h.mu.Unlock() }

func (h *cancelOnPoll) OnFetchRecordUnbuffered(_ *kgo.Record, polled bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if polled && h.cancel != nil {
		h.cancel()
		h.cancel = nil
	}
}

// A fetch whose context ends after its client polled records throws the
// records away but puts the puller back as positioned where the fetch
// started: its client is past them. The next fetch at that offset takes
// the puller, does not reposition it, and gets the records after the
// thrown-away ones: they are skipped (a worker stopped at a revocation,
// the partition coming back to this process, or any other reader at the
// committed offset).
func TestReview3CanceledFetchSkipsRecords(t *testing.T) {
	c := startCluster(t)
	h := &cancelOnPoll{}
	ctx := context.Background()
	b, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(2*time.Second), kafka.WithClientOptions(kgo.WithHooks(h)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.EnsureTopic(ctx, "p", 1); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := b.Publish(ctx, &ferry.Message{Topic: "p", Payload: []byte{byte('0' + i)}}); err != nil {
			t.Fatal(err)
		}
	}
	tp := backend.TopicPartition{Topic: "p"}
	res, err := b.Fetch(ctx, tp, 0, 1)
	if err != nil || len(res.Messages) != 1 || res.Next != 1 {
		t.Fatalf("first fetch: %v, next %d, %v", len(res.Messages), res.Next, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h.arm(cancel)
	if _, err := b.Fetch(cctx, tp, 1, 1); err == nil {
		t.Log("the canceled fetch returned no error (hook did not fire)")
	}
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	defer fcancel()
	res, err = b.Fetch(fctx, tp, 1, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Messages) == 0 || res.Messages[0].Offset != 1 {
		var offs []uint64
		for _, m := range res.Messages {
			offs = append(offs, m.Offset)
		}
		t.Fatalf("fetch at offset 1 returned offsets %v: the record at 1 was skipped", offs)
	}
}
