package broker_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/recordbatch"
)

// producerBatch builds one record batch of producer pid at sequence seq
// with attributes attrs (0x10: transactional), keyed by the values when
// keys is set.
func producerBatch(t *testing.T, attrs int16, pid int64, epoch int16, seq int32, keys bool, values ...string) []byte {
	t.Helper()
	b := recordbatch.Batch{Attributes: attrs, ProducerID: pid, ProducerEpoch: epoch, BaseSequence: seq, BaseTimestamp: time.Now().UnixMilli(),
		LastOffsetDelta: int32(len(values) - 1)}
	b.MaxTimestamp = b.BaseTimestamp
	for i, v := range values {
		r := recordbatch.Record{OffsetDelta: int32(i), Value: []byte(v)}
		if keys {
			r.Key = []byte(v)
		}
		b.Records = append(b.Records, r)
	}
	raw, err := recordbatch.AppendBatch(nil, b, recordbatch.None)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// produceRequest is a Produce request (acks all) of raw records to one
// partition.
func produceRequest(txnID *string, topic string, part int32, raw []byte) *kmsg.ProduceRequest {
	req := kmsg.NewPtrProduceRequest()
	req.Acks, req.TimeoutMillis, req.TransactionID = -1, 5000, txnID
	rt := kmsg.NewProduceRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewProduceRequestTopicPartition()
	rp.Partition, rp.Records = part, raw
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	return req
}

// produceRaw sends raw records to topic/part and returns the partition's
// answer.
func produceRaw(t *testing.T, ctx context.Context, cl *kgo.Client, txnID *string, topic string, part int32, raw []byte) kmsg.ProduceResponseTopicPartition {
	t.Helper()
	resp, err := produceRequest(txnID, topic, part, raw).RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Topics[0].Partitions[0]
}

// produceBatch sends one batch of producer pid at sequence seq to
// partition 0 of topic, and returns the partition's answer.
func produceBatch(t *testing.T, ctx context.Context, cl *kgo.Client, topic string, pid int64, epoch int16, seq int32, values ...string) kmsg.ProduceResponseTopicPartition {
	t.Helper()
	return produceRaw(t, ctx, cl, nil, topic, 0, producerBatch(t, 0, pid, epoch, seq, false, values...))
}

// restartedProducer starts a broker with topic t (one partition) and
// issues an idempotent producer ID; the written values go in its first
// batch (sequence 0, epoch 0), then the broker restarts, so that the
// producer is unknown to the new run. It returns a client of the new run.
func restartedProducer(t *testing.T, written ...string) (*testBroker, context.Context, *kgo.Client, int64) {
	t.Helper()
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	init, err := kmsg.NewPtrInitProducerIDRequest().RequestWith(ctx, cl)
	if err != nil || init.ErrorCode != 0 {
		t.Fatalf("InitProducerId: %v %v", err, init)
	}
	if len(written) > 0 {
		if r := produceBatch(t, ctx, cl, "t", init.ProducerID, 0, 0, written...); r.ErrorCode != 0 {
			t.Fatalf("first batch: %v", kerr.ErrorForCode(r.ErrorCode))
		}
	}
	cl.Close()
	tb.stop()
	tb.start("127.0.0.1:0")
	return tb, ctx, tb.client(), init.ProducerID
}

// seedProducer writes the record of producer pid at sequence seq (its
// derived message ID) to topic/0 and restarts the broker: the producer
// then continues, unknown to the new run, from the log's history. The
// caller makes new clients.
func seedProducer(t *testing.T, tb *testBroker, pid int64, epoch int16, topic string, seq int64) {
	t.Helper()
	m := &ferry.Message{ID: broker.SequenceID(pid, epoch, topic, 0, seq), Topic: topic, PinPartition: true, Payload: []byte("seed")}
	if err := tb.log.Append(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	tb.stop()
	tb.start("127.0.0.1:0")
}

// An idempotent producer's retried batch is answered with the offsets it
// got the first time and is not written again, even after a restart of
// the broker; a gap in its sequence is refused.
func TestIdempotentProducerRetriesAndGaps(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	init, err := kmsg.NewPtrInitProducerIDRequest().RequestWith(ctx, cl)
	if err != nil || init.ErrorCode != 0 {
		t.Fatalf("InitProducerId: %v %v", err, init)
	}
	pid := init.ProducerID

	first := produceBatch(t, ctx, cl, "t", pid, 0, 0, "a", "b", "c")
	if first.ErrorCode != 0 || first.BaseOffset != 0 {
		t.Fatalf("first batch: %+v", first)
	}
	if again := produceBatch(t, ctx, cl, "t", pid, 0, 0, "a", "b", "c"); again.ErrorCode != 0 || again.BaseOffset != 0 {
		t.Fatalf("a retry of the first batch: error %v, base offset %d; want the first batch's answer (0)", kerr.ErrorForCode(again.ErrorCode), again.BaseOffset)
	}
	if gap := produceBatch(t, ctx, cl, "t", pid, 0, 5, "x"); gap.ErrorCode != kerr.OutOfOrderSequenceNumber.Code {
		t.Fatalf("a batch at sequence 5 after 0..2: %v, want OUT_OF_ORDER_SEQUENCE_NUMBER", kerr.ErrorForCode(gap.ErrorCode))
	}
	if next := produceBatch(t, ctx, cl, "t", pid, 0, 3, "d"); next.ErrorCode != 0 || next.BaseOffset != 3 {
		t.Fatalf("the next batch: %+v", next)
	}

	cl.Close()
	tb.stop()
	tb.start("127.0.0.1:0")
	cl = tb.client()
	if again := produceBatch(t, ctx, cl, "t", pid, 0, 3, "d"); again.ErrorCode != 0 || again.BaseOffset != 3 {
		t.Fatalf("a retry after a restart: error %v, base offset %d; want 3", kerr.ErrorForCode(again.ErrorCode), again.BaseOffset)
	}
	if _, end, err := tb.log.Bounds("t", 0); err != nil || end != 4 {
		t.Fatalf("the log ends at %d (%v), want 4: a retry was written twice", end, err)
	}
}

// After a restart the broker knows an idempotent producer only by what
// the log holds. A batch after a gap (the batch before it was never
// written: it died with the server, and the client is still retrying it)
// is refused as out of order and writes nothing; taking it would leave
// the gap, and the earlier batch's retry would then be refused as a
// duplicate, which the client counts as written: a lost record. The
// batch right after the last one written is taken.
func TestIdempotentProducerGapAfterRestart(t *testing.T) {
	tb, ctx, cl, pid := restartedProducer(t, "a", "b", "c")
	// Sequences 3..5 were in flight when the server died; 6.. comes first.
	if r := produceBatch(t, ctx, cl, "t", pid, 0, 6, "g", "h"); r.ErrorCode != kerr.OutOfOrderSequenceNumber.Code {
		t.Fatalf("a batch at sequence 6 after a restart, with 3..5 never written: %v, want OUT_OF_ORDER_SEQUENCE_NUMBER", kerr.ErrorForCode(r.ErrorCode))
	}
	if _, end, _ := tb.log.Bounds("t", 0); end != 3 {
		t.Fatalf("the refused batch was written: the log ends at %d, want 3", end)
	}
	if r := produceBatch(t, ctx, cl, "t", pid, 0, 3, "d", "e", "f"); r.ErrorCode != 0 || r.BaseOffset != 3 {
		t.Fatalf("the batch in flight, retried: %v at %d, want written at 3", kerr.ErrorForCode(r.ErrorCode), r.BaseOffset)
	}
	if r := produceBatch(t, ctx, cl, "t", pid, 0, 6, "g", "h"); r.ErrorCode != 0 || r.BaseOffset != 6 {
		t.Fatalf("the batch after it: %v at %d, want written at 6", kerr.ErrorForCode(r.ErrorCode), r.BaseOffset)
	}
}

// Two batches pipelined on one connection after a restart, the first
// after a gap: the log refuses the first, and so the second, queued
// behind it before either was answered, is refused too and writes
// nothing; taking it would leave the gap below it.
func TestIdempotentPipelineBehindARefusedBatch(t *testing.T) {
	tb, _, _, pid := restartedProducer(t, "a", "b", "c")
	// 3..5 died with the server; 6..7 and 8 come pipelined.
	rc := dialRaw(t, tb.addr)
	var buf []byte
	for _, b := range []struct {
		seq  int32
		vals []string
	}{{6, []string{"g", "h"}}, {8, []string{"i"}}} {
		req := produceRequest(nil, "t", 0, producerBatch(t, 0, pid, 0, b.seq, false, b.vals...))
		req.Version = 7
		buf = append(buf, rc.encode(req)...)
	}
	if _, err := rc.nc.Write(buf); err != nil {
		t.Fatal(err)
	}
	for _, seq := range []int{6, 8} {
		resp := kmsg.NewPtrProduceResponse()
		resp.Version = 7
		if err := rc.recv(resp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if code := resp.Topics[0].Partitions[0].ErrorCode; code != kerr.OutOfOrderSequenceNumber.Code {
			t.Errorf("batch at %d: %v, want OUT_OF_ORDER_SEQUENCE_NUMBER", seq, kerr.ErrorForCode(code))
		}
	}
	if _, end, _ := tb.log.Bounds("t", 0); end != 3 {
		t.Fatalf("the log ends at %d, want 3: a batch was written after the gap", end)
	}
}

// After a restart, a producer whose first batch the log cannot place is
// refused as out of order, and franz-go then bumps its epoch locally
// (without InitProducerId): the new epoch's first batch, at sequence 0,
// is taken. Refusing it too would loop forever, one bump after another.
func TestIdempotentEpochBumpAfterRestartIsTaken(t *testing.T) {
	_, ctx, cl, pid := restartedProducer(t)
	// Issued before the restart; its first batch never written.
	if r := produceBatch(t, ctx, cl, "t", pid, 0, 0, "a"); r.ErrorCode != kerr.OutOfOrderSequenceNumber.Code {
		t.Fatalf("the first batch of an epoch issued before the restart: %v, want OUT_OF_ORDER_SEQUENCE_NUMBER (the log cannot place it)", kerr.ErrorForCode(r.ErrorCode))
	}
	if r := produceBatch(t, ctx, cl, "t", pid, 1, 0, "a"); r.ErrorCode != 0 || r.BaseOffset != 0 {
		t.Fatalf("epoch 1 (a local bump), sequence 0: %v at %d, want written at 0", kerr.ErrorForCode(r.ErrorCode), r.BaseOffset)
	}
	if r := produceBatch(t, ctx, cl, "t", pid, 1, 1, "b"); r.ErrorCode != 0 || r.BaseOffset != 1 {
		t.Fatalf("epoch 1, sequence 1: %v at %d", kerr.ErrorForCode(r.ErrorCode), r.BaseOffset)
	}
}

// Garbage on one connection closes that connection and nothing else: the
// server goes on answering the others.
func TestBadRequestsCloseOnlyTheirConnection(t *testing.T) {
	tb := startBroker(t, broker.WithMaxRequestBytes(1<<20))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	good := tb.client()
	cases := map[string][]byte{
		"oversize":          frame(nil, 2<<20),
		"negative size":     {0xff, 0xff, 0xff, 0xf0},
		"unknown api key":   frame([]byte{0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0xff, 0xff}, 0),
		"truncated header":  frame([]byte{0, 3, 0}, 0),
		"garbage body":      frame([]byte{0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff}, 0),
		"version too high":  frame([]byte{0, 0, 0x40, 0, 0, 0, 0, 1, 0xff, 0xff}, 0),
		"huge array length": frame([]byte{0, 3, 0, 4, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff}, 0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			nc, err := net.Dial("tcp", tb.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.Write(b)
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadAll(nc); err != nil {
				t.Fatalf("the connection was not closed: %v", err)
			}
			if _, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, good); err != nil {
				t.Fatalf("another connection after %s: %v", name, err)
			}
		})
	}
}

// frame prefixes body with its size (or with size, when given).
func frame(body []byte, size int) []byte {
	if size == 0 {
		size = len(body)
	}
	out := binary.BigEndian.AppendUint32(nil, uint32(size))
	return append(out, body...)
}
