package broker

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/broker/recordbatch"
	"github.com/ferrymq/ferry/commitlog"
)

// Header names a record's message ID travels in.
const (
	HeaderID   = "ferry-id" // a ferry message ID, as backend/kafka writes it
	headerCeID = "ce-id"    // a CloudEvents ID: any string
)

// producers holds the idempotent producers' sequence numbers.
//
// As Kafka, the broker keeps for each producer and partition the next
// sequence expected and the last five batches it accepted: a batch at the
// next sequence is written; a retry of one of the five is answered with
// that batch's offset once it is written (a retry of one still being
// written waits for it, and is never written again); an older sequence is
// refused as a duplicate, a later one as out of order. The table is in
// memory.
//
// What survives a restart is the log: each record's message ID is derived
// from producer ID, epoch, partition and sequence (unless the record
// names its own, in a ferry-id or ce-id header), and the log remembers
// the IDs appended within the topic's deduplication window (2 minutes by
// default). A producer the broker has not seen since it started (or whose
// last write failed) is taken at the sequence it sends only if the record
// just before it (sequence-1, also across the wrap at 2^31) or the
// batch's own first record is in the log, by their derived IDs; otherwise
// it is refused as out of order, and the client starts a new epoch.
// Accepting it anyway would leave a gap: the earlier batch, still being
// retried, would then be refused as a duplicate (which the client takes
// as success: a lost record) or written after it (out of order). A batch
// accepted while the one before it is still being written is written
// only if that one was (commitlog.Batch.After), so a failed write never
// leaves a later batch written after a gap. The log makes both checks as
// it writes, in the order batches are written.
//
// Records with IDs of their own cost an epoch bump after a restart (their
// derived IDs are never in the log); the records the new epoch sends
// again are deduplicated by those IDs. A topic without a deduplication
// window cannot answer across a restart: there, a batch whose answer the
// restart lost is written again under the new epoch (at least once).
type producers struct {
	mu   sync.Mutex
	byID map[int64]*producer
}

type producer struct {
	epoch int16
	parts map[tpKey]*sequences
	// issued is set when this run of the broker gave the producer its ID
	// and epoch, or saw the epoch begin: none of its records can be in the
	// log from before, so its first batch to a partition must start at
	// sequence 0, and needs nothing from the log.
	issued bool
}

// sequences is one producer's state in one partition.
type sequences struct {
	next   int32
	recent []*seqBatch // the last batches accepted, oldest first
	// lost is set after a write failed: the next sequence is not known.
	lost bool
}

// seqBatch is an accepted batch. Its fields after first and count are
// guarded by producers.mu; done is closed once it is written or failed.
type seqBatch struct {
	first, count int32
	base         int64 // -1 until written
	err          error // why its write failed
	done         chan struct{}
	// commit is the log batch that holds its last record, once queued
	// (until it is written or failed).
	commit *commitlog.Batch
	// follows names what the log must hold before it
	// (commitlog.Batch.Follows); after is the batch before it, still being
	// written when it was accepted (until it is written or failed).
	follows []ferry.ID
	after   *seqBatch
}

// acceptance is what accept made of a batch.
type acceptance int

const (
	acceptNew     acceptance = iota // to be written
	acceptWritten                   // a retry of a batch written: answer with its offset
	acceptPending                   // a retry of a batch still being written: wait for it
)

const recentBatches = 5

type tpKey struct {
	topic     string
	partition int32
}

func newProducers() *producers { return &producers{byID: map[int64]*producer{}} }

// register records a producer ID the broker issued.
func (ps *producers) register(id int64, epoch int16) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.byID[id] = &producer{epoch: epoch, parts: map[tpKey]*sequences{}, issued: true}
}

// accept checks a batch's producer epoch and sequence. A new batch is
// accepted: its entry is returned, for queued and finished to fill in,
// with what the log must hold before it. A retry of a recent batch
// returns that batch's entry, written or still being written. Anything
// else returns a Kafka error code and why. before derives the message ID
// of a sequence of this producer, epoch and partition.
func (ps *producers) accept(tp tpKey, id int64, epoch int16, first int32, n int, before func(seq int32) ferry.ID) (b *seqBatch, how acceptance, code int16, why string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.byID[id]
	if p == nil {
		p = &producer{epoch: epoch, parts: map[tpKey]*sequences{}}
		ps.byID[id] = p
	}
	switch {
	case epoch < p.epoch:
		return nil, 0, kerr.InvalidProducerEpoch.Code, fmt.Sprintf("producer %d epoch %d: fenced by epoch %d", id, epoch, p.epoch)
	case epoch > p.epoch:
		if first != 0 {
			return nil, 0, kerr.OutOfOrderSequenceNumber.Code, fmt.Sprintf("producer %d epoch %d: a new epoch starts at sequence 0, got %d", id, epoch, first)
		}
		// A bump this run saw (franz-go bumps locally after an error,
		// without InitProducerId): the epoch starts here, at 0, as one
		// this run issued.
		p.epoch, p.parts, p.issued = epoch, map[tpKey]*sequences{}, true
	}
	st := p.parts[tp]
	known := st != nil && !st.lost
	if known && first != st.next {
		for _, r := range st.recent {
			if r.first == first && r.count == int32(n) {
				if r.base < 0 {
					return r, acceptPending, 0, ""
				}
				return r, acceptWritten, 0, ""
			}
		}
		if seqAfter(first, st.next) {
			return nil, 0, kerr.OutOfOrderSequenceNumber.Code, fmt.Sprintf("producer %d to %s/%d: sequence %d, expected %d", id, tp.topic, tp.partition, first, st.next)
		}
		return nil, 0, kerr.DuplicateSequenceNumber.Code, fmt.Sprintf("producer %d to %s/%d: sequence %d is older than the last %d batches (next expected %d)", id, tp.topic, tp.partition, first, recentBatches, st.next)
	}
	if !known && st == nil && p.issued && first != 0 {
		// Nothing of this epoch can be in the log, and a producer numbers
		// each partition from 0: the batches before this one are missing.
		return nil, 0, kerr.OutOfOrderSequenceNumber.Code, fmt.Sprintf("producer %d epoch %d to %s/%d: its first batch starts at sequence %d; an epoch starts each partition at 0", id, epoch, tp.topic, tp.partition, first)
	}
	b = &seqBatch{first: first, count: int32(n), base: -1, done: make(chan struct{})}
	switch {
	case !known && (st != nil || !p.issued):
		// Not seen since the broker started, or after a failed write:
		// the log must hold the record before this batch, or the batch
		// itself (a retry of one written before the restart).
		b.follows = []ferry.ID{before(int32((int64(first) - 1 + (1 << 31)) % (1 << 31))), before(first)}
	case known && len(st.recent) > 0 && st.recent[len(st.recent)-1].base < 0:
		// The batch before is still being written: if that write
		// fails, this one must not be written after the gap.
		b.after = st.recent[len(st.recent)-1]
	}
	if st == nil || st.lost {
		st = &sequences{}
		p.parts[tp] = st
	}
	st.next = int32((int64(first) + int64(n)) % (1 << 31))
	st.recent = append(st.recent, b)
	if len(st.recent) > recentBatches {
		st.recent = st.recent[1:]
	}
	return b, acceptNew, 0, ""
}

// afterBatch returns the log batch a new batch accepted after b must
// follow (nil: none, b is written), or b's error if its write failed.
func (ps *producers) afterBatch(b *seqBatch) (*commitlog.Batch, error) {
	if b == nil {
		return nil, nil
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	switch {
	case b.err != nil:
		return nil, fmt.Errorf("the batch at sequence %d before it failed: %w", b.first, commitlog.ErrNotFollowing)
	case b.base >= 0:
		return nil, nil
	}
	return b.commit, nil
}

// queued records the log batch that holds the last record of bs.
func (ps *producers) queued(bs []acceptedBatch, commit *commitlog.Batch) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, a := range bs {
		a.entry.commit = commit
	}
}

// finished records the outcome of an accepted batch's write (base, its
// first offset, or err) and wakes the retries waiting for it.
func (ps *producers) finished(b *seqBatch, base int64, err error) {
	ps.mu.Lock()
	b.base, b.err = base, err
	if err != nil {
		b.base = -1
	}
	b.commit, b.after = nil, nil // nothing to hold on to any more
	ps.mu.Unlock()
	close(b.done)
}

// outcome returns how a finished batch's write went.
func (ps *producers) outcome(b *seqBatch) (int64, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return b.base, b.err
}

// forget marks the producer's next sequence to tp as not known, after a
// batch whose append failed: its retry must get through, provided the
// log holds the record before it.
func (ps *producers) forget(tp tpKey, id int64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p := ps.byID[id]; p != nil && p.parts[tp] != nil {
		p.parts[tp] = &sequences{lost: true}
	}
}

// seqAfter reports whether sequence a comes after b (sequences wrap at
// 2^31; a difference of less than half the space decides).
func seqAfter(a, b int32) bool {
	d := (int64(a) - int64(b) + (1 << 31)) % (1 << 31)
	return d != 0 && d < 1<<30
}

func handleInitProducerID(r *request) kmsg.Response {
	req := r.body.(*kmsg.InitProducerIDRequest)
	resp := kmsg.NewPtrInitProducerIDResponse()
	sec := r.c.s.cfg.security
	switch {
	case req.TransactionalID != nil && !r.may("transactional_id", *req.TransactionalID, "write"):
		resp.ErrorCode = kerr.TransactionalIDAuthorizationFailed.Code
		return resp
	case req.TransactionalID != nil:
		r.c.s.initTransactional(req, resp)
		return resp
	case sec != nil && !sec.anyWrite(r.c.principal):
		resp.ErrorCode = kerr.ClusterAuthorizationFailed.Code // IdempotentWrite
		return resp
	}
	if req.ProducerID >= 0 && req.ProducerEpoch >= 0 {
		// KIP-360: an idempotent producer bumps its epoch to reset its
		// sequences after an error.
		resp.ProducerID, resp.ProducerEpoch = req.ProducerID, req.ProducerEpoch+1
		if resp.ProducerEpoch < 0 {
			resp.ProducerID, resp.ProducerEpoch = newProducerID(), 0
		}
	} else {
		resp.ProducerID, resp.ProducerEpoch = newProducerID(), 0
	}
	r.c.s.producers.register(resp.ProducerID, resp.ProducerEpoch)
	return resp
}

// newProducerID returns a random positive producer ID: unique across
// restarts without a counter kept on disk.
func newProducerID() int64 {
	var b [8]byte
	rand.Read(b[:])
	return int64(binary.BigEndian.Uint64(b[:]) >> 2)
}

// maxLogBatch is the most messages the log takes in one atomic batch.
const maxLogBatch = 65534

// handleProduce decodes each partition's batches, queues them to the log
// in the order they came and answers once every one is written (at once,
// for acks 0).
func handleProduce(r *request, reply func(kmsg.Response)) {
	req := r.body.(*kmsg.ProduceRequest)
	s := r.c.s
	resp := kmsg.NewPtrProduceResponse()
	var wg sync.WaitGroup
	for _, t := range req.Topics {
		rt := kmsg.NewProduceResponseTopic()
		rt.Topic = t.Topic
		rt.Partitions = make([]kmsg.ProduceResponseTopicPartition, len(t.Partitions))
		info, terr := s.log.Topic(t.Topic)
		denied := int16(0)
		switch {
		case req.TransactionID != nil && !r.may("transactional_id", *req.TransactionID, "write"):
			denied = kerr.TransactionalIDAuthorizationFailed.Code
		case !r.may("topic", t.Topic, "write"):
			denied = kerr.TopicAuthorizationFailed.Code
		}
		for i, p := range t.Partitions {
			rp := &rt.Partitions[i]
			*rp = kmsg.NewProduceResponseTopicPartition()
			rp.Partition, rp.BaseOffset = p.Partition, -1
			fail := func(code int16, msg string) {
				rp.ErrorCode = code
				if msg != "" {
					rp.ErrorMessage = kmsg.StringPtr(msg)
					s.cfg.logger.Debug("produce refused", "topic", t.Topic, "partition", p.Partition, "client", r.clientID, "reason", msg)
				}
			}
			switch {
			case denied != 0:
				fail(denied, "")
				continue
			case partitionCode(info, terr, p.Partition) != 0:
				fail(partitionCode(info, terr, p.Partition), "")
				continue
			}
			in, code, why := s.messages(t.Topic, p.Partition, info.Config, p.Records)
			switch {
			case code != 0 && req.TransactionID != nil:
				// The transaction lost records: it can only abort.
				s.txns.fail(*req.TransactionID, why)
				fail(code, why)
				continue
			case code != 0:
				fail(code, why)
				continue
			case in.dupBase >= 0:
				// Every batch is a retry of one written before: its
				// answer again.
				rp.BaseOffset, rp.LogAppendTime = in.dupBase, -1
				continue
			case in.wait != nil:
				// A retry of a batch still being written: its answer, once
				// it has one (never a second write).
				wg.Add(1)
				go func() {
					defer wg.Done()
					select {
					case <-in.wait.done:
					case <-r.ctx.Done():
						fail(kerr.RequestTimedOut.Code, "the connection closed while the batch was being written")
						return
					}
					if base, err := s.producers.outcome(in.wait); err != nil {
						fail(produceErrorCode(err), err.Error())
					} else {
						rp.BaseOffset, rp.LogAppendTime = base, -1
					}
				}()
				continue
			case len(in.msgs) == 0:
				fail(kerr.InvalidRecord.Code, "no records")
				continue
			case in.txn != nil && req.TransactionID == nil:
				fail(kerr.InvalidRecord.Code, "a transactional batch in a produce request without a transactional ID")
				continue
			case in.txn != nil:
				// Held until EndTxn: its offsets are not known yet.
				fail(s.bufferTxn(*req.TransactionID, tpKey{t.Topic, p.Partition}, in.pid, in.txn.ProducerEpoch, in.txn.BaseSequence, in.msgs))
				continue
			}
			tp := tpKey{t.Topic, p.Partition}
			after, err := s.producers.afterBatch(in.after)
			if err != nil {
				// The batch before failed: this one would follow a gap.
				s.producers.forget(tp, in.pid)
				for _, a := range in.accepted {
					s.producers.finished(a.entry, -1, err)
				}
				fail(kerr.OutOfOrderSequenceNumber.Code, err.Error())
				continue
			}
			// The log takes at most maxLogBatch messages per atomic
			// batch; a larger produce is queued as several, in order,
			// each written only if the one before was.
			chunks := (len(in.msgs) + maxLogBatch - 1) / maxLogBatch
			var mu sync.Mutex
			var firstErr error
			left := chunks
			wg.Add(chunks)
			batches := make([]*commitlog.Batch, chunks)
			for c := range chunks {
				batches[c] = &commitlog.Batch{Messages: in.msgs[c*maxLogBatch : min((c+1)*maxLogBatch, len(in.msgs))], Follows: in.follows, After: after}
				if c > 0 {
					batches[c].Follows, batches[c].After = nil, batches[c-1]
				}
			}
			s.producers.queued(in.accepted, batches[chunks-1])
			for _, b := range batches {
				s.log.CommitAsync(r.ctx, b, func(_ *commitlog.Batch, err error) {
					defer wg.Done()
					mu.Lock()
					defer mu.Unlock()
					if err != nil && firstErr == nil {
						firstErr = err
					}
					if left--; left > 0 {
						return
					}
					if firstErr != nil {
						if in.pid >= 0 {
							s.producers.forget(tp, in.pid)
						}
						for _, a := range in.accepted {
							s.producers.finished(a.entry, -1, firstErr)
						}
						fail(produceErrorCode(firstErr), firstErr.Error())
						return
					}
					for _, a := range in.accepted {
						s.producers.finished(a.entry, int64(in.msgs[a.at].Offset), nil)
					}
					rp.BaseOffset = int64(in.msgs[0].Offset)
					rp.LogAppendTime = -1
					if start, _, err := s.log.Bounds(tp.topic, tp.partition); err == nil {
						rp.LogStartOffset = int64(start)
					}
				})
			}
		}
		resp.Topics = append(resp.Topics, rt)
	}
	if req.Acks == 0 {
		reply(nil)
		return
	}
	go func() {
		wg.Wait()
		reply(resp)
	}()
}

// produced is a partition's records, decoded.
type produced struct {
	msgs []*ferry.Message
	pid  int64              // an idempotent or transactional batch's producer, else -1
	txn  *recordbatch.Batch // the batch, if transactional
	// accepted are the idempotent batches accepted: where each one's
	// messages start in msgs, for written to record its offset.
	accepted []acceptedBatch
	// dupBase is the offset of the first batch when every batch is the
	// retry of one written before (nothing to write), else -1.
	dupBase int64
	// follows and after are what the log must hold before msgs: those of
	// the first batch accepted (the others go in the same log batch).
	follows []ferry.ID
	after   *seqBatch
	// wait is set when the only batch is a retry of one still being
	// written: the answer is that batch's.
	wait *seqBatch
}

type acceptedBatch struct {
	entry *seqBatch
	at    int
}

// messages decodes a partition's records into the log's messages, or
// returns a Kafka error code and why (nothing is accepted then).
func (s *Server) messages(topic string, partition int32, config commitlog.TopicConfig, records []byte) (produced, int16, string) {
	compact := config.Compact
	out := produced{pid: -1, dupBase: -1}
	batches, err := recordbatch.Decode(records, recordbatch.Limits{})
	if err != nil {
		return out, recordbatch.KafkaErrorCode(err), err.Error()
	}
	tp := tpKey{topic, partition}
	per := make([][]*ferry.Message, len(batches))
	for bi, b := range batches {
		switch {
		case b.Control():
			return out, kerr.InvalidRecord.Code, "control batches are written by the broker, not produced"
		case b.Transactional() && (len(batches) > 1 || b.ProducerID < 0):
			return out, kerr.InvalidRecord.Code, "a transactional batch comes alone in its partition's records, from a producer with an ID"
		}
		var scope []byte
		for i, rec := range b.Records {
			if compact && len(rec.Key) == 0 {
				// Refused before anything is queued: the log would refuse
				// it, after the batch's other parts were written.
				return out, kerr.InvalidRecord.Code, fmt.Sprintf("record %d: a compacted topic needs a key on every record", i)
			}
			m := &ferry.Message{Topic: topic, Partition: partition, PinPartition: true, Key: rec.Key, Payload: rec.Value}
			if !b.LogAppendTime() {
				m.Time = time.UnixMilli(b.BaseTimestamp + rec.TimestampDelta)
			}
			for _, h := range rec.Headers {
				if h.Key == HeaderID {
					id, err := ferry.ParseID(string(h.Value))
					if err != nil {
						return out, kerr.InvalidRecord.Code, fmt.Sprintf("record %d: header %s: %v", i, HeaderID, err)
					}
					m.ID = id
					continue
				}
				m.Headers = append(m.Headers, ferry.Header{Key: h.Key, Value: h.Value})
				if h.Key == headerCeID && m.ID.IsZero() {
					m.ID = ceID(h.Value)
				}
			}
			if m.ID.IsZero() && b.ProducerID >= 0 {
				if scope == nil {
					scope = sequenceScope(b.ProducerID, b.ProducerEpoch, topic, partition)
				}
				m.ID = sequenceID(scope, (int64(b.BaseSequence)+int64(i))%(1<<31))
			}
			per[bi] = append(per[bi], m)
		}
	}
	// Every record is valid: now the sequences (a batch refused here
	// leaves the ones before it accepted, and forgotten: see forget).
	allDup := true
	for bi, b := range batches {
		switch {
		case b.Transactional():
			out.txn, out.pid = &batches[bi], b.ProducerID // its sequence is checked within the transaction
			allDup = false
		case b.ProducerID >= 0:
			before := func(seq int32) ferry.ID {
				return sequenceID(sequenceScope(b.ProducerID, b.ProducerEpoch, topic, partition), int64(seq))
			}
			entry, how, code, why := s.producers.accept(tp, b.ProducerID, b.ProducerEpoch, b.BaseSequence, len(b.Records), before)
			if code == 0 && how == acceptPending && len(batches) > 1 {
				code, why = kerr.RequestTimedOut.Code, fmt.Sprintf("producer %d to %s/%d: the batch at sequence %d is still being written: send its retry alone", b.ProducerID, topic, partition, b.BaseSequence)
			}
			if code != 0 {
				if len(out.accepted) > 0 {
					s.producers.forget(tp, b.ProducerID)
				}
				return produced{pid: -1, dupBase: -1}, code, why
			}
			out.pid = b.ProducerID
			switch how {
			case acceptWritten:
				if bi == 0 {
					out.dupBase = entry.base
				}
				continue
			case acceptPending:
				out.wait = entry
				continue
			}
			allDup = false
			if len(out.accepted) == 0 {
				out.follows, out.after = entry.follows, entry.after
			}
			out.accepted = append(out.accepted, acceptedBatch{entry, len(out.msgs)})
		default:
			allDup = false
		}
		out.msgs = append(out.msgs, per[bi]...)
	}
	if !allDup || out.wait != nil {
		out.dupBase = -1
	}
	return out, 0, ""
}

// produceErrorCode is the Kafka error code of a failed write: a batch
// refused for a gap is out of order (the client retries in order or
// starts a new epoch).
func produceErrorCode(err error) int16 {
	if errors.Is(err, commitlog.ErrNotFollowing) {
		return kerr.OutOfOrderSequenceNumber.Code
	}
	return errorCode(err)
}

// sequenceScope is the prefix of the message IDs of an idempotent
// producer's records in one partition: "pid/epoch/topic/partition/".
func sequenceScope(pid int64, epoch int16, topic string, partition int32) []byte {
	return fmt.Appendf(nil, "%d/%d/%s/%d/", pid, epoch, topic, partition)
}

// sequenceID is the message ID of the record at seq within scope.
func sequenceID(scope []byte, seq int64) ferry.ID {
	return ferry.DeriveID("kafka-idempotent", string(strconv.AppendInt(scope, seq, 10)), ferry.ID{})
}

// ceID is the message ID of a CloudEvents ID: itself if it is one, else
// derived from it.
func ceID(v []byte) ferry.ID {
	if id, err := ferry.ParseID(string(v)); err == nil {
		return id
	}
	return ferry.DeriveID("ce-id", string(v), ferry.ID{})
}
