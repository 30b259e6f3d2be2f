package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/recordbatch"
	"github.com/ferrymq/ferry/commitlog"
)

// r19Batch is one record batch of producer pid at seq; ids[i], when not
// empty, is record i's ferry-id header.
func r19Batch(t *testing.T, pid int64, epoch int16, seq int32, ids []string, values ...string) []byte {
	t.Helper()
	b := recordbatch.Batch{ProducerID: pid, ProducerEpoch: epoch, BaseSequence: seq, BaseTimestamp: time.Now().UnixMilli(),
		LastOffsetDelta: int32(len(values) - 1)}
	b.MaxTimestamp = b.BaseTimestamp
	for i, v := range values {
		r := recordbatch.Record{OffsetDelta: int32(i), Value: []byte(v)}
		if i < len(ids) && ids[i] != "" {
			r.Headers = []recordbatch.Header{{Key: broker.HeaderID, Value: []byte(ids[i])}}
		}
		b.Records = append(b.Records, r)
	}
	raw, err := recordbatch.AppendBatch(nil, b, recordbatch.None)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func r19Init(t *testing.T, ctx context.Context, cl *kgo.Client) (int64, int16) {
	t.Helper()
	init, err := kmsg.NewPtrInitProducerIDRequest().RequestWith(ctx, cl)
	if err != nil || init.ErrorCode != 0 {
		t.Fatalf("InitProducerId: %v %v", err, init)
	}
	return init.ProducerID, init.ProducerEpoch
}

// r19Values reads partition 0 of topic from the start to its end.
func r19Values(t *testing.T, ctx context.Context, tb *testBroker, topic string) []string {
	t.Helper()
	_, end, err := tb.log.Bounds(topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	cl := tb.client(kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {0: kgo.NewOffset().AtStart()}}))
	var out []string
	for uint64(len(out)) < end {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("reading %s: %v (have %d of %d)", topic, err, len(out), end)
		}
		fs.EachRecord(func(r *kgo.Record) { out = append(out, string(r.Value)) })
	}
	return out
}

// After a restart, a producer whose sequence has wrapped sends its batch
// at sequence 0 before the retry of the batch at 2^31-3..2^31-1, which
// died with the server. Sequence 0 is taken without Follows (accept only
// sets it when first != 0), so it is written after the gap; the retry of
// the earlier batch is then refused as DUPLICATE_SEQUENCE_NUMBER, which
// the client counts as written: acknowledged records lost.
func TestReview19WrappedSequenceZeroAfterRestartSkipsFollows(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	pid, epoch := r19Init(t, ctx, cl)
	cl.Close()
	seedProducer(t, tb, pid, epoch, "t", 1<<31-7)
	cl = tb.client()
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, 1<<31-6, "a", "b", "c"); r.ErrorCode != 0 {
		t.Fatalf("first batch: %s", codeName(r.ErrorCode))
	}
	cl.Close()
	tb.stop()
	tb.start("127.0.0.1:0")
	cl = tb.client()
	// 2^31-3..2^31-1 ("d","e","f") were in flight when the server
	// stopped; the batch after them (wrapped to 0) comes first.
	after := produceBatch(t, ctx, cl, "t", pid, epoch, 0, "g", "h")
	retry := produceBatch(t, ctx, cl, "t", pid, epoch, 1<<31-3, "d", "e", "f")
	t.Logf("seq 0 first: %s; then the retry of 2^31-3: %s", codeName(after.ErrorCode), codeName(retry.ErrorCode))
	if after.ErrorCode != kerr.OutOfOrderSequenceNumber.Code {
		t.Errorf("a batch at (wrapped) sequence 0 after a restart, with 2^31-3..2^31-1 never written: %s, want OUT_OF_ORDER_SEQUENCE_NUMBER", codeName(after.ErrorCode))
	}
	if retry.ErrorCode == kerr.DuplicateSequenceNumber.Code {
		got := r19Values(t, ctx, tb, "t")
		t.Errorf("the retry of 2^31-3..2^31-1 was answered DUPLICATE_SEQUENCE_NUMBER (the client's success) but the log holds %v: d, e, f lost", got)
	}
}

// After a restart, Follows passes when the batch's first record is
// itself in the dedup window. With ferry-id headers (backend/kafka, an
// outbox relay re-publishing a message after its own crash) the first
// record of a new batch can be a message-level duplicate while the batch
// is not a retry: the batch is written after a gap and the in-flight
// batch before it is then refused as a duplicate: lost.
func TestReview19FerryIDDuplicateFirstRecordPassesFollowsAfterRestart(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	pid, epoch := r19Init(t, ctx, cl)
	k := func() string { return ferry.NewID().String() }
	k1, k2, k3, k4, k5, k6 := k(), k(), k(), k(), k(), k()
	if r := produceRaw(t, ctx, cl, nil, "t", 0, r19Batch(t, pid, epoch, 0, []string{k1, k2}, "a", "b")); r.ErrorCode != 0 {
		t.Fatalf("first batch: %s", codeName(r.ErrorCode))
	}
	cl.Close()
	tb.stop()
	tb.start("127.0.0.1:0")
	cl = tb.client()
	// Seqs 2..3 (k3, k4) were in flight when the server stopped. The
	// batch after them re-publishes k1 (a redelivered message) then k5, k6.
	after := produceRaw(t, ctx, cl, nil, "t", 0, r19Batch(t, pid, epoch, 4, []string{k1, k5, k6}, "a-again", "e", "f"))
	retry := produceRaw(t, ctx, cl, nil, "t", 0, r19Batch(t, pid, epoch, 2, []string{k3, k4}, "c", "d"))
	got := r19Values(t, ctx, tb, "t")
	t.Logf("seq 4 first: %s; then the retry of 2: %s; log %v", codeName(after.ErrorCode), codeName(retry.ErrorCode), got)
	if after.ErrorCode == 0 {
		t.Errorf("a batch at sequence 4 after a restart, with 2..3 never written, was written (its first record's ID is an old one): log %v", got)
	}
	if retry.ErrorCode == kerr.DuplicateSequenceNumber.Code || retry.ErrorCode == 0 && len(got) > 0 && got[len(got)-1] != "d" {
		t.Errorf("the retry of 2..3: %s (DUPLICATE_SEQUENCE_NUMBER is the client's success) but the log holds %v: c, d lost or out of order", codeName(retry.ErrorCode), got)
	}
}

// The same with ce-id: a CloudEvents ID is any string, and re-sending an
// event (same ce-id) is the CloudEvents way to retry.
func TestReview19CeIDDuplicateFirstRecordPassesFollowsAfterRestart(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	pid, epoch := r19Init(t, ctx, cl)
	mk := func(seq int32, ceids []string, values ...string) []byte {
		b := recordbatch.Batch{ProducerID: pid, ProducerEpoch: epoch, BaseSequence: seq, BaseTimestamp: time.Now().UnixMilli(), LastOffsetDelta: int32(len(values) - 1)}
		b.MaxTimestamp = b.BaseTimestamp
		for i, v := range values {
			b.Records = append(b.Records, recordbatch.Record{OffsetDelta: int32(i), Value: []byte(v), Headers: []recordbatch.Header{{Key: "ce-id", Value: []byte(ceids[i])}}})
		}
		raw, err := recordbatch.AppendBatch(nil, b, recordbatch.None)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	if r := produceRaw(t, ctx, cl, nil, "t", 0, mk(0, []string{"evt-1", "evt-2"}, "a", "b")); r.ErrorCode != 0 {
		t.Fatalf("first batch: %s", codeName(r.ErrorCode))
	}
	cl.Close()
	tb.stop()
	tb.start("127.0.0.1:0")
	cl = tb.client()
	after := produceRaw(t, ctx, cl, nil, "t", 0, mk(4, []string{"evt-1", "evt-5"}, "a-again", "e"))
	retry := produceRaw(t, ctx, cl, nil, "t", 0, mk(2, []string{"evt-3", "evt-4"}, "c", "d"))
	got := r19Values(t, ctx, tb, "t")
	t.Logf("seq 4 first: %s; then the retry of 2: %s; log %v", codeName(after.ErrorCode), codeName(retry.ErrorCode), got)
	if retry.ErrorCode == kerr.DuplicateSequenceNumber.Code {
		t.Errorf("the retry of 2..3 was answered DUPLICATE_SEQUENCE_NUMBER (the client's success) but the log holds %v: c, d lost", got)
	}
}

// r19Pipeline sends every request on one connection in one write and
// returns each partition answer, in order.
func r19Pipeline(t *testing.T, addr string, reqs ...*kmsg.ProduceRequest) []kmsg.ProduceResponseTopicPartition {
	t.Helper()
	rc := dialRaw(t, addr)
	defer rc.nc.Close()
	var buf []byte
	for _, req := range reqs {
		req.Version = 7
		buf = append(buf, rc.encode(req)...)
	}
	if _, err := rc.nc.Write(buf); err != nil {
		t.Fatal(err)
	}
	var out []kmsg.ProduceResponseTopicPartition
	for range reqs {
		resp := kmsg.NewPtrProduceResponse()
		resp.Version = 7
		if err := rc.recv(resp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		out = append(out, resp.Topics[0].Partitions[0])
	}
	return out
}

// On a topic without a dedup window (DedupWindow < 0), the retry of a
// batch still being written (franz-go resends a batch on a new connection
// while the old connection's copy is queued) is "written again, the log's
// deduplication answers it" (produce.go) -- but there is no deduplication:
// the batch is written twice and both copies are acknowledged.
func TestReview19NoDedupTopicInFlightRetryWrittenTwice(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tb.log.CreateTopic(ctx, "nodedup", commitlog.TopicConfig{Partitions: 1, DedupWindow: -1}); err != nil {
		t.Fatal(err)
	}
	cl := tb.client()
	for try := range 20 {
		pid, epoch := r19Init(t, ctx, cl)
		_, before, _ := tb.log.Bounds("nodedup", 0)
		var reqs []*kmsg.ProduceRequest
		for range 3 {
			reqs = append(reqs, produceRequest(nil, "nodedup", 0, producerBatch(t, 0, pid, epoch, 0, false, "a", "b")))
		}
		rs := r19Pipeline(t, tb.addr, reqs...)
		_, after, _ := tb.log.Bounds("nodedup", 0)
		for i, r := range rs {
			if r.ErrorCode != 0 {
				t.Fatalf("try %d copy %d: %s", try, i, codeName(r.ErrorCode))
			}
		}
		if after-before != 2 {
			t.Fatalf("try %d: one batch of 2 records sent 3 times (a retry while the first was being written), every copy acknowledged at %d/%d/%d: the log grew by %d records, want 2", try, rs[0].BaseOffset, rs[1].BaseOffset, rs[2].BaseOffset, after-before)
		}
	}
}

// On a topic without a dedup window, a batch written before a restart
// whose answer was lost is retried after the restart: at sequence 0 it is
// taken again (no Follows at sequence 0, no dedup to catch it), so the
// acknowledged records are in the log twice.
func TestReview19NoDedupTopicRetryAfterRestartWrittenTwice(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tb.log.CreateTopic(ctx, "nodedup", commitlog.TopicConfig{Partitions: 1, DedupWindow: -1}); err != nil {
		t.Fatal(err)
	}
	cl := tb.client()
	pid, epoch := r19Init(t, ctx, cl)
	if r := produceBatch(t, ctx, cl, "nodedup", pid, epoch, 0, "a", "b"); r.ErrorCode != 0 {
		t.Fatal(codeName(r.ErrorCode))
	}
	cl.Close()
	tb.stop()
	tb.start("127.0.0.1:0")
	cl = tb.client()
	r := produceBatch(t, ctx, cl, "nodedup", pid, epoch, 0, "a", "b")
	_, end, _ := tb.log.Bounds("nodedup", 0)
	if r.ErrorCode == 0 && end != 2 {
		t.Errorf("the retry of sequence 0..1 after a restart: OK at offset %d; the log holds %d records, want 2: written twice", r.BaseOffset, end)
	}
}

// With a small DedupMaxIDs, the retry of a batch still being written is
// queued behind other producers' writes that push the original's IDs out
// of the window; the retry carries no Follows (the original's
// predecessor was written) and is written a second time, both copies
// acknowledged. Kafka answers such a retry (one of the last five batches)
// from its producer state, not from a bounded window.
func TestReview19SmallDedupWindowInFlightRetryWrittenTwice(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := tb.log.CreateTopic(ctx, "small", commitlog.TopicConfig{Partitions: 1, DedupMaxIDs: 2}); err != nil {
		t.Fatal(err)
	}
	cl := tb.client()
	for try := range 20 {
		pid, epoch := r19Init(t, ctx, cl)
		other, oepoch := r19Init(t, ctx, cl)
		_, before, _ := tb.log.Bounds("small", 0)
		rs := r19Pipeline(t, tb.addr,
			produceRequest(nil, "small", 0, producerBatch(t, 0, pid, epoch, 0, false, "a", "b")),
			produceRequest(nil, "small", 0, producerBatch(t, 0, other, oepoch, 0, false, "x1", "x2", "x3", "x4", "x5")),
			produceRequest(nil, "small", 0, producerBatch(t, 0, pid, epoch, 0, false, "a", "b")),
		)
		_, after, _ := tb.log.Bounds("small", 0)
		for i, r := range rs {
			if r.ErrorCode != 0 {
				t.Fatalf("try %d request %d: %s", try, i, codeName(r.ErrorCode))
			}
		}
		if after-before != 7 {
			t.Fatalf("try %d: a's batch (2 records) sent twice around another producer's 5: both acknowledged (at %d and %d), the log grew by %d, want 7: written twice", try, rs[0].BaseOffset, rs[2].BaseOffset, after-before)
		}
	}
}
