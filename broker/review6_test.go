package broker_test

// Adversarial review 6: transactions, the idempotent producer table and
// security. Each test asserts what a Kafka client (or operator) is
// entitled to; the failing ones show defects.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kbin"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/ferrymq/ferry/broker"
	"github.com/ferrymq/ferry/broker/recordbatch"
	"github.com/ferrymq/ferry/commitlog"
)

// --- helpers -------------------------------------------------------------

type rawTxn struct {
	t     *testing.T
	ctx   context.Context
	cl    *kgo.Client
	id    string
	pid   int64
	epoch int16
	seq   map[string]int32
}

func initTxn(t *testing.T, ctx context.Context, cl *kgo.Client, id string, timeout time.Duration) *rawTxn {
	t.Helper()
	req := kmsg.NewPtrInitProducerIDRequest()
	req.TransactionalID = kmsg.StringPtr(id)
	req.TransactionTimeoutMillis = int32(timeout / time.Millisecond)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil || resp.ErrorCode != 0 {
		t.Fatalf("InitProducerId %s: %v %v", id, err, kerr.ErrorForCode(resp.ErrorCode))
	}
	return &rawTxn{t: t, ctx: ctx, cl: cl, id: id, pid: resp.ProducerID, epoch: resp.ProducerEpoch, seq: map[string]int32{}}
}

func (x *rawTxn) addPartitions(topic string, parts ...int32) int16 {
	x.t.Helper()
	req := kmsg.NewPtrAddPartitionsToTxnRequest()
	req.TransactionalID, req.ProducerID, req.ProducerEpoch = x.id, x.pid, x.epoch
	rt := kmsg.NewAddPartitionsToTxnRequestTopic()
	rt.Topic, rt.Partitions = topic, parts
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(x.ctx, x.cl)
	if err != nil {
		x.t.Fatal(err)
	}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if p.ErrorCode != 0 {
				return p.ErrorCode
			}
		}
	}
	return 0
}

func (x *rawTxn) addOffsets(group string) int16 {
	x.t.Helper()
	req := kmsg.NewPtrAddOffsetsToTxnRequest()
	req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Group = x.id, x.pid, x.epoch, group
	resp, err := req.RequestWith(x.ctx, x.cl)
	if err != nil {
		x.t.Fatal(err)
	}
	return resp.ErrorCode
}

func (x *rawTxn) txnOffsetCommit(group, member string, gen int32, topic string, part int32, off int64) int16 {
	x.t.Helper()
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Group = x.id, x.pid, x.epoch, group
	req.MemberID, req.Generation = member, gen
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic = topic
	rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = part, off
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(x.ctx, x.cl)
	if err != nil {
		x.t.Fatal(err)
	}
	return resp.Topics[0].Partitions[0].ErrorCode
}

func (x *rawTxn) endTxn(commit bool) int16 {
	x.t.Helper()
	req := kmsg.NewPtrEndTxnRequest()
	req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Commit = x.id, x.pid, x.epoch, commit
	resp, err := req.RequestWith(x.ctx, x.cl)
	if err != nil {
		x.t.Fatal(err)
	}
	return resp.ErrorCode
}

// txnBatch builds one transactional record batch.
func txnBatch(t *testing.T, pid int64, epoch int16, seq int32, keys bool, values ...string) []byte {
	t.Helper()
	return producerBatch(t, 0x10, pid, epoch, seq, keys, values...)
}

// produce sends values as one transactional batch of x to topic/part.
func (x *rawTxn) produce(topic string, part int32, keys bool, values ...string) int16 {
	x.t.Helper()
	k := fmt.Sprintf("%s/%d", topic, part)
	r := produceRaw(x.t, x.ctx, x.cl, kmsg.StringPtr(x.id), topic, part, txnBatch(x.t, x.pid, x.epoch, x.seq[k], keys, values...))
	if r.ErrorCode == 0 {
		x.seq[k] += int32(len(values))
	}
	return r.ErrorCode
}

func codeName(c int16) string {
	if c == 0 {
		return "OK"
	}
	return kerr.ErrorForCode(c).Error()
}

func createTopicConfigs(t *testing.T, ctx context.Context, tb *testBroker, name string, configs map[string]*string) {
	t.Helper()
	resp, err := kadm.NewClient(tb.client()).CreateTopic(ctx, 1, 1, configs, name)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatal(err)
	}
}

// --- transactions ------------------------------------------------------------

// A transaction's produce is acknowledged (held for EndTxn) without the
// checks the log makes at commit: a keyless record to a compacted topic
// is accepted, and the commit then fails. Worse, EndTxn retried after the
// failed commit answers success, though nothing was written: a client
// whose first EndTxn answer was lost (or which retries on any error)
// believes the transaction committed.
func TestReview6EndTxnRetryAfterFailedCommitSaysCommitted(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	createTopicConfigs(t, ctx, tb, "compacted", map[string]*string{"cleanup.policy": kmsg.StringPtr("compact")})
	cl := tb.client()
	x := initTxn(t, ctx, cl, "tx", time.Minute)
	if c := x.addPartitions("compacted", 0); c != 0 {
		t.Fatal(codeName(c))
	}
	produceCode := x.produce("compacted", 0, false, "keyless-1", "keyless-2")
	first := x.endTxn(true)
	second := x.endTxn(true)
	_, end, _ := tb.log.Bounds("compacted", 0)
	t.Logf("produce: %s; EndTxn(commit): %s; EndTxn(commit) again: %s; records in the log: %d", codeName(produceCode), codeName(first), codeName(second), end)
	if produceCode == 0 && first != 0 {
		t.Errorf("the transactional produce was acknowledged, but EndTxn(commit) failed with %s: the broker accepted records the log refuses (keyless records to a compacted topic)", codeName(first))
	}
	if second == 0 && end == 0 {
		t.Errorf("EndTxn(commit) retried after a failed commit answered success, and nothing was written: the client believes a lost transaction committed")
	}
}

// The transaction byte bound counts 64 bytes a record, but the log also
// bounds an atomic batch to 65534 messages: a transaction of more small
// records has every produce acknowledged and its commit refused.
func TestReview6TransactionOfManySmallRecordsCannotCommit(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	x := initTxn(t, ctx, cl, "tx", time.Minute)
	if c := x.addPartitions("t", 0); c != 0 {
		t.Fatal(codeName(c))
	}
	vals := make([]string, 35000)
	for i := range vals {
		vals[i] = "v"
	}
	for i := range 2 {
		if c := x.produce("t", 0, false, vals...); c != 0 {
			t.Logf("produce %d refused: %s (the bound is enforced at produce time: fine)", i, codeName(c))
			return
		}
	}
	if c := x.endTxn(true); c != 0 {
		t.Fatalf("70000 records (about 4.5 MB as counted, under the 8 MiB bound) were all acknowledged, then EndTxn(commit): %s", codeName(c))
	}
}

// KIP-447: a consumer that takes over a partition fetches its offsets with
// RequireStable and must get UNSTABLE_OFFSET_COMMIT while a transaction
// holds offsets of that partition, else it reprocesses inputs that the
// open transaction then commits (duplicated outputs). The broker answers
// the old offset at once ("offsets are never pending" in offsets.go).
func TestReview6RequireStableIgnoresOpenTransactionOffsets(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "in", 1)
	tb.createTopic(ctx, "out", 1)
	cl := tb.client()
	x := initTxn(t, ctx, cl, "tx", time.Minute)
	if c := x.addPartitions("out", 0); c != 0 {
		t.Fatal(codeName(c))
	}
	if c := x.produce("out", 0, false, "output-of-input-0"); c != 0 {
		t.Fatal(codeName(c))
	}
	if c := x.addOffsets("g"); c != 0 {
		t.Fatal(codeName(c))
	}
	if c := x.txnOffsetCommit("g", "", -1, "in", 0, 1); c != 0 {
		t.Fatal(codeName(c))
	}
	req := kmsg.NewPtrOffsetFetchRequest()
	req.Version = 7
	req.Group, req.RequireStable = "g", true
	rt := kmsg.NewOffsetFetchRequestTopic()
	rt.Topic, rt.Partitions = "in", []int32{0}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	p := resp.Topics[0].Partitions[0]
	code := resp.ErrorCode
	if code == 0 {
		code = p.ErrorCode
	}
	if code != kerr.UnstableOffsetCommit.Code {
		t.Errorf("OffsetFetch(RequireStable) while an open transaction holds in/0's offset: offset %d, %s; want UNSTABLE_OFFSET_COMMIT", p.Offset, codeName(code))
	}
	if c := x.endTxn(true); c != 0 {
		t.Fatal(codeName(c))
	}
}

// After a successful abort, EndTxn(commit) answers success (Kafka:
// INVALID_TXN_STATE): a client that retries with the wrong outcome is told
// its aborted records are committed.
func TestReview6CommitAfterAbortSaysCommitted(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	x := initTxn(t, ctx, tb.client(), "tx", time.Minute)
	x.addPartitions("t", 0)
	if c := x.produce("t", 0, false, "a"); c != 0 {
		t.Fatal(codeName(c))
	}
	if c := x.endTxn(false); c != 0 {
		t.Fatal(codeName(c))
	}
	if c := x.endTxn(true); c == 0 {
		t.Errorf("EndTxn(commit) after the transaction was aborted: success; want INVALID_TXN_STATE")
	}
}

// A zombie (old epoch) cannot produce, commit offsets or end after a new
// incarnation, a stale generation cannot commit transactional offsets, and
// the broker restarted mid-transaction leaves nothing of it.
func TestReview6ZombiesGenerationsRestart(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "in", 1)
	tb.createTopic(ctx, "out", 1)
	cl := tb.client()
	old := initTxn(t, ctx, cl, "tx", time.Minute)
	old.addPartitions("out", 0)
	if c := old.produce("out", 0, false, "zombie-0"); c != 0 {
		t.Fatal(codeName(c))
	}
	old.addOffsets("g")
	cur := initTxn(t, ctx, cl, "tx", time.Minute)
	if cur.epoch == old.epoch {
		t.Fatal("no epoch bump")
	}
	if c := old.produce("out", 0, false, "zombie-1"); c != kerr.ProducerFenced.Code && c != kerr.InvalidProducerEpoch.Code {
		t.Errorf("zombie produce: %s", codeName(c))
	}
	if c := old.txnOffsetCommit("g", "", -1, "in", 0, 5); c == 0 {
		t.Errorf("zombie TxnOffsetCommit accepted")
	}
	if c := old.endTxn(true); c == 0 {
		t.Errorf("zombie EndTxn accepted")
	}

	// Stale generation: a member joins, the group moves on, the old
	// generation's transactional commit is refused.
	join := func(member string) (string, int32) {
		for {
			req := kmsg.NewPtrJoinGroupRequest()
			req.Group, req.SessionTimeoutMillis, req.RebalanceTimeoutMillis, req.ProtocolType = "g", 30000, 1000, "consumer"
			req.MemberID = member
			pr := kmsg.NewJoinGroupRequestProtocol()
			pr.Name = "range"
			req.Protocols = append(req.Protocols, pr)
			resp, err := req.RequestWith(ctx, cl)
			if err != nil {
				t.Fatal(err)
			}
			if resp.ErrorCode == kerr.MemberIDRequired.Code {
				member = resp.MemberID
				continue
			}
			if resp.ErrorCode != 0 {
				t.Fatal(codeName(resp.ErrorCode))
			}
			return resp.MemberID, resp.Generation
		}
	}
	m, gen := join("")
	_, gen2 := join(m) // a rejoin bumps the generation
	if gen2 == gen {
		t.Logf("rejoin kept generation %d", gen)
	}
	cur.addPartitions("out", 0)
	cur.addOffsets("g")
	req := kmsg.NewPtrTxnOffsetCommitRequest()
	req.Version = 3
	req.TransactionalID, req.ProducerID, req.ProducerEpoch, req.Group, req.MemberID, req.Generation = cur.id, cur.pid, cur.epoch, "g", m, gen-1
	rt := kmsg.NewTxnOffsetCommitRequestTopic()
	rt.Topic = "in"
	rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
	rp.Partition, rp.Offset = 0, 7
	rt.Partitions = append(rt.Partitions, rp)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.Topics[0].Partitions[0].ErrorCode; c != kerr.IllegalGeneration.Code {
		t.Errorf("TxnOffsetCommit with a stale generation: %s", codeName(c))
	}

	// Restart mid-transaction.
	if c := cur.produce("out", 0, false, "before-restart"); c != 0 {
		t.Fatal(codeName(c))
	}
	tb.stop()
	tb.start(tb.addr)
	cl2 := tb.client()
	cur.cl = cl2
	if c := cur.endTxn(true); c == 0 {
		t.Errorf("EndTxn after a restart: success")
	}
	if _, end, _ := tb.log.Bounds("out", 0); end != 0 {
		t.Errorf("out holds %d records after zombies and a restart, want 0", end)
	}
	if _, ok := tb.log.CommittedOffset("g", "in", 0); ok {
		t.Errorf("g has an offset for in/0")
	}
}

// Consume-transform-produce with franz-go's GroupTransactSession and three
// members joining and leaving: every input's output is in "out" exactly
// once (read_committed) and the group's offsets are at the input's end.
func TestReview6GroupTransactSessionExactlyOnce(t *testing.T) {
	tb := startBroker(t, broker.WithGroupSessionTimeouts(time.Second, time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tb.createTopic(ctx, "in", 6)
	tb.createTopic(ctx, "out", 3)
	const n = 12000
	prod := tb.client(kgo.DefaultProduceTopic("in"))
	prodDone := make(chan struct{})
	go func() {
		defer close(prodDone)
		for i := range n {
			prod.Produce(ctx, &kgo.Record{Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "%d", i)}, nil)
			if i%200 == 0 {
				time.Sleep(40 * time.Millisecond)
			}
		}
		if err := prod.Flush(ctx); err != nil {
			t.Error(err)
		}
	}()

	member := func(id int, txnID string, stop <-chan struct{}, wg *sync.WaitGroup) {
		defer wg.Done()
		s, err := kgo.NewGroupTransactSession(kgo.SeedBrokers(tb.addr), kgo.TransactionalID(txnID),
			kgo.ConsumerGroup("etl"), kgo.ConsumeTopics("in"), kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.RequireStableFetchOffsets(), kgo.SessionTimeout(6*time.Second), kgo.HeartbeatInterval(500*time.Millisecond),
			kgo.DefaultProduceTopic("out"), kgo.TransactionTimeout(20*time.Second))
		if err != nil {
			t.Error(err)
			return
		}
		defer s.Close()
		for {
			select {
			case <-stop:
				return
			default:
			}
			pctx, pcancel := context.WithTimeout(ctx, time.Second)
			fs := s.PollRecords(pctx, 50)
			pcancel()
			if fs.NumRecords() == 0 {
				continue
			}
			if err := s.Begin(); err != nil {
				t.Errorf("member %d Begin: %v", id, err)
				return
			}
			fs.EachRecord(func(r *kgo.Record) {
				s.Produce(ctx, &kgo.Record{Key: r.Key, Value: r.Value}, func(_ *kgo.Record, err error) {
					if err != nil {
						t.Logf("member %d produce: %v", id, err)
					}
				})
			})
			time.Sleep(20 * time.Millisecond) // processing: widens the rebalance windows
			if _, err := s.End(ctx, kgo.TryCommit); err != nil {
				t.Logf("member %d End: %v", id, err)
			}
		}
	}
	var wg sync.WaitGroup
	stops := make([]chan struct{}, 5)
	for i := range stops {
		stops[i] = make(chan struct{})
	}
	start := func(id int, txnID string) { wg.Add(1); go member(id, txnID, stops[id], &wg) }
	start(0, "etl-0")
	time.Sleep(time.Second)
	start(1, "etl-1")
	time.Sleep(time.Second)
	start(2, "etl-2")
	time.Sleep(time.Second)
	close(stops[1]) // a member leaves mid-stream
	time.Sleep(time.Second)
	start(3, "etl-1") // and comes back (a new incarnation of its transactional ID)
	time.Sleep(time.Second)
	close(stops[0])
	start(4, "etl-0")
	<-prodDone
	committedAll := func() bool {
		for p := range int32(6) {
			_, end, _ := tb.log.Bounds("in", p)
			if off, ok := tb.log.CommittedOffset("etl", "in", p); !ok || off != end {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(90 * time.Second)
	for !committedAll() && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	close(stops[2])
	close(stops[3])
	close(stops[4])
	wg.Wait()
	if !committedAll() {
		t.Errorf("the group's offsets did not reach the input's end")
	}
	counts := map[string]int{}
	total := 0
	for p := range int32(3) {
		_, end, _ := tb.log.Bounds("out", p)
		total += int(end)
		for off := uint64(0); off < end; {
			res, err := tb.log.Read("out", p, off, readAll(int(end)))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range res.Messages {
				counts[string(m.Payload)]++
			}
			off = res.Next
		}
	}
	var dups, missing []string
	for i := range n {
		switch c := counts[fmt.Sprint(i)]; {
		case c == 0:
			missing = append(missing, fmt.Sprint(i))
		case c > 1:
			dups = append(dups, fmt.Sprint(i))
		}
	}
	sort.Strings(dups)
	if len(dups) > 0 || len(missing) > 0 {
		t.Errorf("out holds %d records for %d inputs: %d duplicated (%v...), %d missing (%v...)", total, n, len(dups), first(dups, 5), len(missing), first(missing, 5))
	}
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

// --- idempotent producer -------------------------------------------------

// A produce whose batch is queued to the log as several atomic batches
// (more than 65534 records) is torn when a later part fails: the first
// part is written and visible, and the client is told the batch failed
// (a Kafka batch is written whole or not at all). A client's retry then
// writes the first part again (without idempotence nothing catches it).
func TestReview6ChunkedProduceIsTornByAFailingPart(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	createTopicConfigs(t, ctx, tb, "compacted", map[string]*string{"cleanup.policy": kmsg.StringPtr("compact")})
	cl := tb.client()
	// 65535 records: the first 65534 keyed (the log's first atomic
	// batch), the last keyless (refused by a compacted topic).
	b := recordbatch.Batch{ProducerID: -1, ProducerEpoch: -1, BaseSequence: -1, BaseTimestamp: time.Now().UnixMilli(), LastOffsetDelta: 65534}
	b.MaxTimestamp = b.BaseTimestamp
	for i := range 65535 {
		r := recordbatch.Record{OffsetDelta: int32(i), Value: []byte("v")}
		if i < 65534 {
			r.Key = fmt.Appendf(nil, "%d", i)
		}
		b.Records = append(b.Records, r)
	}
	raw, err := recordbatch.AppendBatch(nil, b, recordbatch.None)
	if err != nil {
		t.Fatal(err)
	}
	r := produceRaw(t, ctx, cl, nil, "compacted", 0, raw)
	_, end, _ := tb.log.Bounds("compacted", 0)
	t.Logf("produce: %s %s; log holds %d", codeName(r.ErrorCode), deref(r.ErrorMessage), end)
	if r.ErrorCode != 0 && end != 0 {
		t.Errorf("the produce failed (%s) but %d of its 65535 records are in the log: a batch torn", codeName(r.ErrorCode), end)
	}
}

// Pipelined idempotent batches; a retry of one still being written is
// written once; sequences wrap at 2^31; an epoch bump restarts at 0.
func TestReview6IdempotentPipelineWrapAndBump(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 1)
	cl := tb.client()
	init, err := kmsg.NewPtrInitProducerIDRequest().RequestWith(ctx, cl)
	if err != nil || init.ErrorCode != 0 {
		t.Fatal(err)
	}
	pid, epoch := init.ProducerID, init.ProducerEpoch
	// Near the wrap: the log holds the record before it (an earlier run).
	start := int32(1<<31 - 3)
	cl.Close()
	seedProducer(t, tb, pid, epoch, "t", int64(start)-1)
	cl = tb.client()
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, start, "a", "b"); r.ErrorCode != 0 {
		t.Fatal(codeName(r.ErrorCode))
	}
	// Crosses the wrap: seqs 2^31-1, 0, 1.
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, 1<<31-1, "c", "d", "e"); r.ErrorCode != 0 {
		t.Fatalf("batch across the wrap: %s", codeName(r.ErrorCode))
	}
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, 2, "f"); r.ErrorCode != 0 {
		t.Fatalf("batch after the wrap: %s", codeName(r.ErrorCode))
	}
	// A retry of the batch across the wrap: its offset, not written.
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, 1<<31-1, "c", "d", "e"); r.ErrorCode != 0 || r.BaseOffset != 3 {
		t.Errorf("retry across the wrap: %s base %d, want OK 3", codeName(r.ErrorCode), r.BaseOffset)
	}
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, 5, "gap"); r.ErrorCode != kerr.OutOfOrderSequenceNumber.Code {
		t.Errorf("gap: %s", codeName(r.ErrorCode))
	}
	// Pipelined: the same batch twice on one connection before either
	// is answered (a retry of a batch still being written).
	rc := dialRaw(t, tb.addr)
	mk := func(seq int32, vals ...string) *kmsg.ProduceRequest {
		req := produceRequest(nil, "t", 0, producerBatch(t, 0, pid, epoch, seq, false, vals...))
		req.Version = 7
		return req
	}
	var buf []byte
	for range 4 {
		buf = append(buf, rc.encode(mk(3, "g1", "g2"))...)
	}
	buf = append(buf, rc.encode(mk(5, "h"))...)
	if _, err := rc.nc.Write(buf); err != nil {
		t.Fatal(err)
	}
	var bases []int64
	for range 5 {
		resp := kmsg.NewPtrProduceResponse()
		resp.Version = 7
		if err := rc.recv(resp, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		p := resp.Topics[0].Partitions[0]
		if p.ErrorCode != 0 {
			t.Errorf("pipelined: %s", codeName(p.ErrorCode))
		}
		bases = append(bases, p.BaseOffset)
	}
	if !slices.Equal(bases, []int64{7, 7, 7, 7, 9}) {
		t.Errorf("pipelined retries answered at %v, want [7 7 7 7 9]", bases)
	}
	// KIP-360 bump.
	req := kmsg.NewPtrInitProducerIDRequest()
	req.ProducerID, req.ProducerEpoch = pid, epoch
	bump, err := req.RequestWith(ctx, cl)
	if err != nil || bump.ErrorCode != 0 || bump.ProducerID != pid || bump.ProducerEpoch != epoch+1 {
		t.Fatalf("bump: %v %+v", err, bump)
	}
	if r := produceBatch(t, ctx, cl, "t", pid, epoch, 6, "old-epoch"); r.ErrorCode == 0 {
		t.Errorf("the old epoch still produces after the bump")
	}
	if r := produceBatch(t, ctx, cl, "t", pid, epoch+1, 0, "new"); r.ErrorCode != 0 {
		t.Errorf("new epoch at 0: %s", codeName(r.ErrorCode))
	}
	if _, end, _ := tb.log.Bounds("t", 0); end != 11 {
		t.Errorf("t ends at %d, want 11 (the seed and 10)", end)
	}
}

// --- security --------------------------------------------------------------

const review6Security = `{
  "users": [{"name": "alice", "password": "alice-secret"}, {"name": "bob", "password": "bob-secret"}, {"name": "admin", "password": "admin-secret"}],
  "super_users": ["admin"],
  "acls": [
    {"principal": "User:alice", "resource": "topic", "name": "orders", "operations": ["read", "write"]},
    {"principal": "User:alice", "resource": "transactional_id", "name": "alice-tx", "operations": ["write"]},
    {"principal": "User:bob", "resource": "topic", "name": "orders", "operations": ["read", "write"]},
    {"principal": "User:alice", "resource": "group", "name": "billing", "operations": ["read"]},
    {"principal": "User:bob", "resource": "group", "name": "billing", "operations": ["read"]}
  ]
}`

func secureBroker(t *testing.T) (*testBroker, context.Context) {
	sec, err := broker.LoadSecurity(securityFile(t, review6Security, 0o600))
	if err != nil {
		t.Fatal(err)
	}
	tb := startBroker(t, broker.WithSecurity(sec))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	admin := tb.client(kgo.SASL(scram.Auth{User: "admin", Pass: "admin-secret"}.AsSha256Mechanism()))
	for _, topic := range []string{"orders", "secret"} {
		if _, err := kadm.NewClient(admin).CreateTopic(ctx, 1, 1, nil, topic); err != nil {
			t.Fatal(err)
		}
	}
	return tb, ctx
}

func asUser(tb *testBroker, user string) *kgo.Client {
	return tb.client(kgo.SASL(scram.Auth{User: user, Pass: user + "-secret"}.AsSha256Mechanism()), kgo.RequestRetries(0))
}

// A produce of a transactional batch without a transactional ID in the
// request (or with another one) is checked only against the topic ACL:
// bob, who may not use alice's transactional ID, adds a record to her open
// transaction, which her commit then writes (Kafka: a produce with
// transactional records needs write on the request's transactional ID).
func TestReview6TransactionalBatchBypassesTransactionalIDACL(t *testing.T) {
	tb, ctx := secureBroker(t)
	alice, bob := asUser(tb, "alice"), asUser(tb, "bob")
	x := initTxn(t, ctx, alice, "alice-tx", time.Minute)
	if c := x.addPartitions("orders", 0); c != 0 {
		t.Fatal(codeName(c))
	}
	if c := x.produce("orders", 0, false, "alice-1"); c != 0 {
		t.Fatal(codeName(c))
	}
	r := produceRaw(t, ctx, bob, nil, "orders", 0, txnBatch(t, x.pid, x.epoch, 1, false, "from-bob"))
	if r.ErrorCode == 0 {
		t.Errorf("bob's transactional batch (no transactional ID in the request) was taken into alice's transaction")
		x.seq["orders/0"]++
	}
	// TxnOffsetCommit checks the group and topic, not the transactional
	// ID (Kafka: WRITE on it): bob moves the offsets alice's transaction
	// commits.
	if c := x.addOffsets("billing"); c != 0 {
		t.Fatal(codeName(c))
	}
	bx := *x
	bx.cl = bob
	if c := bx.txnOffsetCommit("billing", "", -1, "orders", 0, 42); c == 0 {
		t.Errorf("bob's TxnOffsetCommit into alice's transaction (he has no ACL on alice-tx) was accepted")
	}
	if c := x.endTxn(true); c != 0 {
		t.Fatal(codeName(c))
	}
	if off, ok := tb.log.CommittedOffset("billing", "orders", 0); ok && off == 42 {
		t.Errorf("alice's transaction committed bob's offset 42 for billing")
	}
	res, _ := tb.log.Read("orders", 0, 0, readAll(10))
	for _, m := range res.Messages {
		if string(m.Payload) == "from-bob" {
			t.Errorf("alice's committed transaction holds bob's record")
		}
	}
}

// topicIDOf is the broker's topic ID of a name (metadata.go topicID):
// anyone can compute it.
func topicIDOf(name string) [16]byte {
	sum := sha256.Sum256([]byte("ferry-topic\x00" + name))
	var id [16]byte
	copy(id[:], sum[:16])
	return id
}

// Metadata by topic ID answers a denied topic's name: alice, who may not
// describe "secret", learns it exists (and its name) by asking for the
// ID of a guessed name; a name that does not exist answers differently.
// DeleteTopics v6 by ID does the same.
func TestReview6MetadataByTopicIDLeaksDeniedTopic(t *testing.T) {
	tb, ctx := secureBroker(t)
	alice := asUser(tb, "alice")
	ask := func(name string) kmsg.MetadataResponseTopic {
		req := kmsg.NewPtrMetadataRequest()
		req.Version = 12
		rt := kmsg.NewMetadataRequestTopic()
		rt.TopicID = topicIDOf(name)
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, alice)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Topics[0]
	}
	exists, none := ask("secret"), ask("no-such-topic")
	t.Logf("by ID: secret -> %q %s; no-such-topic -> %q %s", deref(exists.Topic), codeName(exists.ErrorCode), deref(none.Topic), codeName(none.ErrorCode))
	if deref(exists.Topic) != deref(none.Topic) || exists.ErrorCode != none.ErrorCode {
		t.Errorf("a denied topic and a missing one answer differently by ID: alice learns %q exists", deref(exists.Topic))
	}
}

// saslRaw runs a SaslHandshake and the first SaslAuthenticate on a new
// connection and returns the server's answer.
func saslRaw(t *testing.T, addr, mech string, first []byte) (*rawConn, *kmsg.SASLAuthenticateResponse) {
	t.Helper()
	rc := dialRaw(t, addr)
	hs := kmsg.NewPtrSASLHandshakeRequest()
	hs.Version, hs.Mechanism = 1, mech
	rc.send(hs)
	hr := kmsg.NewPtrSASLHandshakeResponse()
	hr.Version = 1
	if err := rc.recv(hr, 5*time.Second); err != nil || hr.ErrorCode != 0 {
		t.Fatalf("handshake: %v %s", err, codeName(hr.ErrorCode))
	}
	au := kmsg.NewPtrSASLAuthenticateRequest()
	au.Version, au.SASLAuthBytes = 1, first
	rc.send(au)
	ar := kmsg.NewPtrSASLAuthenticateResponse()
	ar.Version = 1
	if err := rc.recv(ar, 10*time.Second); err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	return rc, ar
}

// SCRAM answers an unknown user with an all-zero salt, a known one with a
// random salt: user names can be enumerated with one round trip each.
func TestReview6SCRAMSaltRevealsUnknownUsers(t *testing.T) {
	tb, _ := secureBroker(t)
	salt := func(user string) []byte {
		_, ar := saslRaw(t, tb.addr, "SCRAM-SHA-256", []byte("n,,n="+user+",r=clientnonce"))
		for _, kv := range strings.Split(string(ar.SASLAuthBytes), ",") {
			if v, ok := strings.CutPrefix(kv, "s="); ok {
				b, _ := base64.StdEncoding.DecodeString(v)
				return b
			}
		}
		t.Fatalf("no salt in %q", ar.SASLAuthBytes)
		return nil
	}
	known, unknown := salt("alice"), salt("mallory")
	if bytes.Equal(unknown, make([]byte, len(unknown))) && !bytes.Equal(known, unknown) {
		t.Errorf("unknown user's salt is all zeros (%x), alice's is %x: which names exist shows", unknown, known)
	}
}

// SCRAM edge cases: a wrong nonce, a replayed client-final on a new
// connection, a channel binding request and an authzid of another user are
// all refused.
func TestReview6SCRAMEdgeCases(t *testing.T) {
	tb, _ := secureBroker(t)
	// A genuine exchange to replay, built with franz-go's scram client
	// steps by hand.
	cf := "n,,n=alice,r=fixednonce"
	rc, ar := saslRaw(t, tb.addr, "SCRAM-SHA-256", []byte(cf))
	if ar.ErrorCode != 0 {
		t.Fatal(codeName(ar.ErrorCode))
	}
	final := scramFinal(t, "alice-secret", cf[3:], string(ar.SASLAuthBytes), "biws")
	au := kmsg.NewPtrSASLAuthenticateRequest()
	au.Version, au.SASLAuthBytes = 1, []byte(final)
	rc.send(au)
	ok := kmsg.NewPtrSASLAuthenticateResponse()
	ok.Version = 1
	if err := rc.recv(ok, 5*time.Second); err != nil || ok.ErrorCode != 0 {
		t.Fatalf("genuine exchange: %v %s %s", err, codeName(ok.ErrorCode), deref(ok.ErrorMessage))
	}
	// Replay on a new connection: the server's nonce differs.
	rc2, ar2 := saslRaw(t, tb.addr, "SCRAM-SHA-256", []byte(cf))
	if ar2.ErrorCode != 0 {
		t.Fatal(codeName(ar2.ErrorCode))
	}
	au.SASLAuthBytes = []byte(final)
	rc2.send(au)
	rep := kmsg.NewPtrSASLAuthenticateResponse()
	rep.Version = 1
	if err := rc2.recv(rep, 5*time.Second); err == nil && rep.ErrorCode == 0 {
		t.Errorf("a replayed client-final authenticated")
	}
	// Channel binding asked for: refused.
	_, cb := saslRaw(t, tb.addr, "SCRAM-SHA-256", []byte("p=tls-unique,,n=alice,r=x"))
	if cb.ErrorCode == 0 {
		t.Errorf("p= channel binding accepted")
	}
	// An authorization ID of another user: the exchange must not
	// authenticate as admin, and should be refused.
	cfz := "n,a=admin,n=alice,r=nonce2"
	rc3, ar3 := saslRaw(t, tb.addr, "SCRAM-SHA-256", []byte(cfz))
	if ar3.ErrorCode == 0 {
		final := scramFinal(t, "alice-secret", "n=alice,r=nonce2", string(ar3.SASLAuthBytes), base64.StdEncoding.EncodeToString([]byte("n,a=admin,")))
		au.SASLAuthBytes = []byte(final)
		rc3.send(au)
		r3 := kmsg.NewPtrSASLAuthenticateResponse()
		r3.Version = 1
		if err := rc3.recv(r3, 5*time.Second); err == nil && r3.ErrorCode == 0 {
			// As whom? Ask for a topic only admin may describe.
			md := kmsg.NewPtrMetadataRequest()
			md.Version = 12
			rt := kmsg.NewMetadataRequestTopic()
			rt.Topic = kmsg.StringPtr("secret")
			md.Topics = append(md.Topics, rt)
			rc3.send(md)
			mr := kmsg.NewPtrMetadataResponse()
			mr.Version = 12
			if err := rc3.recv(mr, 5*time.Second); err == nil && mr.Topics[0].ErrorCode == 0 {
				t.Errorf("authzid admin with alice's password: authorized as admin")
			} else {
				t.Logf("authzid of another user accepted and ignored (RFC 5802 says refuse it; Kafka refuses)")
			}
		}
	}
	// Mismatched channel-binding attribute: c= must be the GS2 header.
	rc4, ar4 := saslRaw(t, tb.addr, "SCRAM-SHA-256", []byte("n,,n=alice,r=nonce3"))
	if ar4.ErrorCode == 0 {
		final := scramFinal(t, "alice-secret", "n=alice,r=nonce3", string(ar4.SASLAuthBytes), base64.StdEncoding.EncodeToString([]byte("y,,")))
		au.SASLAuthBytes = []byte(final)
		rc4.send(au)
		r4 := kmsg.NewPtrSASLAuthenticateResponse()
		r4.Version = 1
		if err := rc4.recv(r4, 5*time.Second); err == nil && r4.ErrorCode == 0 {
			t.Logf("client-final c= differing from the GS2 header accepted (RFC 5802 §5.1 wants it checked)")
		}
	}
}

// scramFinal computes a SCRAM-SHA-256 client-final message.
func scramFinal(t *testing.T, password, clientFirstBare, serverFirst, cbind string) string {
	t.Helper()
	attrs := map[string]string{}
	for _, kv := range strings.Split(serverFirst, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			attrs[k] = v
		}
	}
	salt, _ := base64.StdEncoding.DecodeString(attrs["s"])
	var iters int
	fmt.Sscan(attrs["i"], &iters)
	return scramClientFinal(password, salt, iters, clientFirstBare, serverFirst, "c="+cbind+",r="+attrs["r"])
}

// An unauthenticated client can make the broker read (and hold) a whole
// 100 MiB Produce before it is refused for not being authenticated
// (Kafka bounds what it reads before authentication to 512 KiB,
// sasl.server.max.receive.size).
func TestReview6UnauthenticatedLargeRequestIsRead(t *testing.T) {
	tb, _ := secureBroker(t)
	nc, err := net.Dial("tcp", tb.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	const size = 48 << 20
	hdr := []byte{0, 0, 0, 0}
	hdr = kbin.AppendInt16(hdr, 0)
	hdr = kbin.AppendInt16(hdr, 7)
	hdr = kbin.AppendInt32(hdr, 1)
	binary.BigEndian.PutUint32(hdr, size)
	if _, err := nc.Write(hdr); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	written := len(hdr) - 4
	nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
	for written+len(chunk) <= size {
		n, err := nc.Write(chunk)
		written += n
		if err != nil {
			break
		}
	}
	if written > 16<<20 {
		t.Errorf("an unauthenticated connection sent %d MiB of a %d MiB request before the broker refused it", written>>20, size>>20)
	}
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	io.Copy(io.Discard, nc)
}

var _ = errors.Is

func readAll(n int) commitlog.ReadOpts {
	return commitlog.ReadOpts{MaxMessages: max(n, 1), MaxBytes: 1 << 30}
}

func scramClientFinal(password string, salt []byte, iters int, clientFirstBare, serverFirst, withoutProof string) string {
	salted, _ := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	auth := clientFirstBare + "," + serverFirst + "," + withoutProof
	sig := mac(stored[:], auth)
	proof := make([]byte, len(sig))
	for i := range sig {
		proof[i] = clientKey[i] ^ sig[i]
	}
	return withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof)
}
