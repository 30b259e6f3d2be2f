package broker

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
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
// Kafka refuses a batch whose first sequence is not the one after the
// last it wrote for that producer and partition, and answers a retry of a
// recent batch with its offsets. Here the retry needs no table: a record's
// message ID is derived from its producer ID, epoch, partition and
// sequence, so the log's deduplication answers it with the original
// offsets, across restarts too (within the topic's deduplication window).
// What is kept is the next sequence expected, to refuse gaps; a producer
// the broker has not seen since it started is taken at the sequence it
// sends.
type producers struct {
	mu   sync.Mutex
	byID map[int64]*producer
}

type producer struct {
	epoch int16
	next  map[tpKey]int32 // next sequence expected
}

type tpKey struct {
	topic     string
	partition int32
}

func newProducers() *producers { return &producers{byID: map[int64]*producer{}} }

// register records a producer ID the broker issued.
func (ps *producers) register(id int64, epoch int16) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.byID[id] = &producer{epoch: epoch, next: map[tpKey]int32{}}
}

// accept checks a batch's producer epoch and sequence and, when it is
// accepted, moves the expected sequence past it. It returns a Kafka error
// code.
func (ps *producers) accept(tp tpKey, id int64, epoch int16, first int32, n int) (int16, string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	p := ps.byID[id]
	if p == nil {
		p = &producer{epoch: epoch, next: map[tpKey]int32{}}
		ps.byID[id] = p
	}
	switch {
	case epoch < p.epoch:
		return kerr.InvalidProducerEpoch.Code, fmt.Sprintf("producer %d epoch %d: fenced by epoch %d", id, epoch, p.epoch)
	case epoch > p.epoch:
		p.epoch, p.next = epoch, map[tpKey]int32{}
		if first != 0 {
			return kerr.OutOfOrderSequenceNumber.Code, fmt.Sprintf("producer %d epoch %d: a new epoch starts at sequence 0, got %d", id, epoch, first)
		}
	}
	next, ok := p.next[tp]
	if ok && seqAfter(first, next) {
		return kerr.OutOfOrderSequenceNumber.Code, fmt.Sprintf("producer %d to %s/%d: sequence %d, expected %d (or a retry of an earlier batch)", id, tp.topic, tp.partition, first, next)
	}
	// A new batch (first == next) moves next past it; a retry of an
	// earlier one (first before next) only where it reaches further.
	if end := int32((int64(first) + int64(n)) % (1 << 31)); !ok || !seqAfter(next, end) {
		p.next[tp] = end
	}
	return 0, ""
}

// forget makes the next batch of the producer to tp accepted at any
// sequence (after a batch whose append failed: its retry must get
// through).
func (ps *producers) forget(tp tpKey, id int64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p := ps.byID[id]; p != nil {
		delete(p.next, tp)
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
			case terr != nil:
				fail(errorCode(terr), "")
				continue
			case p.Partition < 0 || int(p.Partition) >= len(info.Partitions):
				fail(kerr.UnknownTopicOrPartition.Code, "")
				continue
			}
			msgs, pid, txn, code, why := s.messages(t.Topic, p.Partition, p.Records)
			if code != 0 {
				fail(code, why)
				continue
			}
			if len(msgs) == 0 {
				fail(kerr.InvalidRecord.Code, "no records")
				continue
			}
			if txn != nil {
				// Held until EndTxn: its offsets are not known yet.
				fail(s.bufferTxn(tpKey{t.Topic, p.Partition}, pid, txn.ProducerEpoch, txn.BaseSequence, msgs))
				continue
			}
			b := &commitlog.Batch{Messages: msgs}
			wg.Add(1)
			tp := tpKey{t.Topic, p.Partition}
			s.log.CommitAsync(r.ctx, b, func(b *commitlog.Batch, err error) {
				defer wg.Done()
				if err != nil {
					if pid >= 0 {
						s.producers.forget(tp, pid)
					}
					fail(errorCode(err), err.Error())
					return
				}
				rp.BaseOffset = int64(b.Messages[0].Offset)
				rp.LogAppendTime = -1
				if start, _, err := s.log.Bounds(tp.topic, tp.partition); err == nil {
					rp.LogStartOffset = int64(start)
				}
			})
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

// messages decodes a partition's records into the log's messages. It
// returns the producer ID of an idempotent batch (-1 otherwise), the batch
// if it is transactional, or a Kafka error code and why.
func (s *Server) messages(topic string, partition int32, records []byte) ([]*ferry.Message, int64, *recordbatch.Batch, int16, string) {
	batches, err := recordbatch.Decode(records, recordbatch.Limits{})
	if err != nil {
		return nil, -1, nil, recordbatch.KafkaErrorCode(err), err.Error()
	}
	var txn *recordbatch.Batch
	var msgs []*ferry.Message
	pid := int64(-1)
	for _, b := range batches {
		switch {
		case b.Control():
			return nil, -1, nil, kerr.InvalidRecord.Code, "control batches are written by the broker, not produced"
		case b.Transactional() && (len(batches) > 1 || b.ProducerID < 0):
			return nil, -1, nil, kerr.InvalidRecord.Code, "a transactional batch comes alone in its partition's records, from a producer with an ID"
		case b.Transactional():
			txn, pid = &b, b.ProducerID // its sequence is checked within the transaction
		case b.ProducerID >= 0:
			code, why := s.producers.accept(tpKey{topic, partition}, b.ProducerID, b.ProducerEpoch, b.BaseSequence, len(b.Records))
			if code != 0 {
				return nil, -1, nil, code, why
			}
			pid = b.ProducerID
		}
		for i, rec := range b.Records {
			m := &ferry.Message{Topic: topic, Partition: partition, PinPartition: true, Key: rec.Key, Payload: rec.Value}
			if !b.LogAppendTime() {
				m.Time = time.UnixMilli(b.BaseTimestamp + rec.TimestampDelta)
			}
			for _, h := range rec.Headers {
				if h.Key == HeaderID {
					id, err := ferry.ParseID(string(h.Value))
					if err != nil {
						return nil, -1, nil, kerr.InvalidRecord.Code, fmt.Sprintf("record %d: header %s: %v", i, HeaderID, err)
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
				seq := (int64(b.BaseSequence) + int64(i)) % (1 << 31)
				m.ID = ferry.DeriveID("kafka-idempotent", fmt.Sprintf("%d/%d/%s/%d/%d", b.ProducerID, b.ProducerEpoch, topic, partition, seq), ferry.ID{})
			}
			msgs = append(msgs, m)
		}
	}
	return msgs, pid, txn, 0, ""
}

// ceID is the message ID of a CloudEvents ID: itself if it is one, else
// derived from it.
func ceID(v []byte) ferry.ID {
	if id, err := ferry.ParseID(string(v)); err == nil {
		return id
	}
	return ferry.DeriveID("ce-id", string(v), ferry.ID{})
}
