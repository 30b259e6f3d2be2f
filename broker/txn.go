package broker

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/broker/groups"
	"github.com/ferrymq/ferry/commitlog"
)

// Transactions are kept in memory until EndTxn and written then as one
// atomic batch of the log, records and group offsets together: the log
// never holds an aborted or a torn transaction, so read_committed and
// read_uncommitted read the same, the last stable offset is the high
// watermark, and a crash of the broker aborts every open transaction. A
// transactional record's offset is known only at commit: the produce
// answer's base offset is -1.

// maxTxnTimeout bounds the transaction timeout a producer asks for (as
// Kafka's transaction.max.timeout.ms default).
const maxTxnTimeout = 15 * time.Minute

type txns struct {
	mu    sync.Mutex
	byID  map[string]*txn
	byPID map[int64]*txn
	max   int // bytes one transaction may hold (the log's atomic batch bound)
}

// txn is one transactional ID's producer and its open transaction.
type txn struct {
	id      string
	pid     int64
	epoch   int16
	timeout time.Duration

	open    bool
	gen     uint64 // counts the transactions begun: a timer knows its own
	timer   *time.Timer
	parts   map[tpKey]bool
	group   string
	offsets map[tpKey]int64
	msgs    []*ferry.Message
	bytes   int
	next    map[tpKey]int32 // next sequence of each partition in this transaction
	failed  string          // why the transaction can only abort ("" if it can commit)

	// The last transaction's end, kept until the next begins, so that a
	// retried EndTxn gets the same answer (and the other outcome
	// INVALID_TXN_STATE). ending is closed once it is known; committing
	// holds its group offsets meanwhile (RequireStable).
	ended      bool
	lastCommit bool
	lastCode   int16
	ending     chan struct{}
	committing map[tpKey]int64
	commitGrp  string
}

func newTxns(maxBytes int) *txns {
	return &txns{byID: map[string]*txn{}, byPID: map[int64]*txn{}, max: maxBytes}
}

// resetLocked drops t's open transaction.
func (t *txn) resetLocked() {
	if t.timer != nil {
		t.timer.Stop()
	}
	t.open, t.timer, t.group, t.failed = false, nil, "", ""
	t.parts, t.offsets, t.next = map[tpKey]bool{}, map[tpKey]int64{}, map[tpKey]int32{}
	t.msgs, t.bytes = nil, 0
}

// check finds the transactional ID's producer and checks the epoch; it
// returns a Kafka error code.
func (ts *txns) checkLocked(id string, pid int64, epoch int16) (*txn, int16) {
	t := ts.byID[id]
	switch {
	case t == nil || t.pid != pid:
		return nil, kerr.InvalidProducerIDMapping.Code
	case epoch < t.epoch:
		return nil, kerr.ProducerFenced.Code
	case epoch > t.epoch:
		return nil, kerr.InvalidProducerEpoch.Code
	}
	return t, 0
}

// beginLocked opens t's transaction if needed, with its timeout: past it
// the transaction is aborted and the producer fenced (its epoch bumped),
// as Kafka does.
func (ts *txns) beginLocked(t *txn, logger func(string, ...any)) {
	if t.open {
		return
	}
	t.open, t.ended = true, false
	t.gen++
	gen := t.gen
	t.timer = time.AfterFunc(t.timeout, func() {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		if t.open && t.gen == gen {
			logger("transaction timed out: aborted, producer fenced", "transactional_id", t.id, "producer_id", t.pid, "epoch", t.epoch, "timeout", t.timeout)
			t.resetLocked()
			t.epoch++
		}
	})
}

func (s *Server) initTransactional(req *kmsg.InitProducerIDRequest, resp *kmsg.InitProducerIDResponse) {
	timeout := time.Duration(req.TransactionTimeoutMillis) * time.Millisecond
	if timeout <= 0 || timeout > maxTxnTimeout {
		resp.ErrorCode = kerr.InvalidTransactionTimeout.Code
		return
	}
	ts := s.txns
	ts.mu.Lock()
	defer ts.mu.Unlock()
	id := *req.TransactionalID
	t := ts.byID[id]
	switch {
	case t == nil:
		t = &txn{id: id, pid: newProducerID()}
		t.resetLocked()
		ts.byID[id], ts.byPID[t.pid] = t, t
	case req.ProducerID >= 0 && (req.ProducerID != t.pid || req.ProducerEpoch != t.epoch):
		// KIP-360: a producer may bump its own epoch, not another's.
		resp.ErrorCode = kerr.ProducerFenced.Code
		return
	default:
		// A new incarnation fences the old: its open transaction is
		// aborted.
		if t.open {
			s.cfg.logger.Info("transaction aborted: its producer was re-initialized", "transactional_id", id)
		}
		t.resetLocked()
		t.epoch++
		if t.epoch < 0 {
			delete(ts.byPID, t.pid)
			t.pid, t.epoch = newProducerID(), 0
			ts.byPID[t.pid] = t
		}
	}
	t.timeout = timeout
	resp.ProducerID, resp.ProducerEpoch = t.pid, t.epoch
	s.producers.register(t.pid, t.epoch)
}

func handleAddPartitionsToTxn(r *request) kmsg.Response {
	req := r.body.(*kmsg.AddPartitionsToTxnRequest)
	resp := kmsg.NewPtrAddPartitionsToTxnResponse()
	s := r.c.s
	ts := s.txns
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, code := ts.checkLocked(req.TransactionalID, req.ProducerID, req.ProducerEpoch)
	if !r.may("transactional_id", req.TransactionalID, "write") {
		code = kerr.TransactionalIDAuthorizationFailed.Code
	}
	for _, rt := range req.Topics {
		ot := kmsg.NewAddPartitionsToTxnResponseTopic()
		ot.Topic = rt.Topic
		info, terr := s.log.Topic(rt.Topic)
		for _, p := range rt.Partitions {
			op := kmsg.NewAddPartitionsToTxnResponseTopicPartition()
			op.Partition = p
			switch {
			case code != 0:
				op.ErrorCode = code
			case !r.may("topic", rt.Topic, "write"):
				op.ErrorCode = kerr.TopicAuthorizationFailed.Code
			case partitionCode(info, terr, p) != 0:
				op.ErrorCode = partitionCode(info, terr, p)
			}
			ot.Partitions = append(ot.Partitions, op)
		}
		resp.Topics = append(resp.Topics, ot)
	}
	// All or nothing, as Kafka: one partition refused adds none.
	for _, ot := range resp.Topics {
		for _, op := range ot.Partitions {
			if op.ErrorCode != 0 {
				for i := range resp.Topics {
					for j := range resp.Topics[i].Partitions {
						if resp.Topics[i].Partitions[j].ErrorCode == 0 {
							resp.Topics[i].Partitions[j].ErrorCode = kerr.OperationNotAttempted.Code
						}
					}
				}
				return resp
			}
		}
	}
	if t == nil {
		return resp
	}
	ts.beginLocked(t, s.cfg.logger.Warn)
	for _, rt := range req.Topics {
		for _, p := range rt.Partitions {
			t.parts[tpKey{rt.Topic, p}] = true
		}
	}
	return resp
}

func handleAddOffsetsToTxn(r *request) kmsg.Response {
	req := r.body.(*kmsg.AddOffsetsToTxnRequest)
	resp := kmsg.NewPtrAddOffsetsToTxnResponse()
	ts := r.c.s.txns
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t, code := ts.checkLocked(req.TransactionalID, req.ProducerID, req.ProducerEpoch)
	switch {
	case !r.may("transactional_id", req.TransactionalID, "write"):
		resp.ErrorCode = kerr.TransactionalIDAuthorizationFailed.Code
	case !r.may("group", req.Group, "read"):
		resp.ErrorCode = kerr.GroupAuthorizationFailed.Code
	case code != 0:
		resp.ErrorCode = code
	case req.Group == "":
		resp.ErrorCode = kerr.InvalidGroupID.Code
	case t.group != "" && t.group != req.Group:
		// The log commits one group's offsets per atomic batch.
		r.c.s.cfg.logger.Warn("transaction refused a second group", "transactional_id", t.id, "group", t.group, "second", req.Group)
		resp.ErrorCode = kerr.InvalidTxnState.Code
	default:
		ts.beginLocked(t, r.c.s.cfg.logger.Warn)
		t.group = req.Group
	}
	return resp
}

func handleTxnOffsetCommit(r *request) kmsg.Response {
	req := r.body.(*kmsg.TxnOffsetCommitRequest)
	resp := kmsg.NewPtrTxnOffsetCommitResponse()
	s := r.c.s
	ts := s.txns
	ts.mu.Lock()
	t, code := ts.checkLocked(req.TransactionalID, req.ProducerID, req.ProducerEpoch)
	if code == 0 && (t.group != req.Group || !t.open) {
		code = kerr.InvalidTxnState.Code // AddOffsetsToTxn first
	}
	switch {
	case !r.may("transactional_id", req.TransactionalID, "write"):
		code = kerr.TransactionalIDAuthorizationFailed.Code
	case !r.may("group", req.Group, "read"):
		code = kerr.GroupAuthorizationFailed.Code
	}
	ts.mu.Unlock()
	if code == 0 && r.version >= 3 && (req.MemberID != "" || req.Generation != -1) {
		// KIP-447: the commit is fenced by the group generation.
		if c := s.groups.CheckMember(req.Group, req.MemberID, req.Generation); c != groups.SimpleCommit {
			code = c
		}
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, rt := range req.Topics {
		ot := kmsg.NewTxnOffsetCommitResponseTopic()
		ot.Topic = rt.Topic
		info, terr := s.log.Topic(rt.Topic)
		for _, p := range rt.Partitions {
			op := kmsg.NewTxnOffsetCommitResponseTopicPartition()
			op.Partition = p.Partition
			switch {
			case code != 0:
				op.ErrorCode = code
			case !r.may("topic", rt.Topic, "read"):
				op.ErrorCode = kerr.TopicAuthorizationFailed.Code
			case partitionCode(info, terr, p.Partition) != 0:
				op.ErrorCode = partitionCode(info, terr, p.Partition)
			case p.Offset < 0:
				op.ErrorCode = kerr.InvalidRequest.Code
			case !t.open || t.epoch != req.ProducerEpoch || t.group != req.Group:
				op.ErrorCode = kerr.InvalidTxnState.Code // aborted meanwhile
			default:
				t.offsets[tpKey{rt.Topic, p.Partition}] = p.Offset
			}
			ot.Partitions = append(ot.Partitions, op)
		}
		resp.Topics = append(resp.Topics, ot)
	}
	return resp
}

// bufferTxn adds a transactional batch's messages to its open
// transaction. It returns a Kafka error code and why.
func (s *Server) bufferTxn(txnID string, tp tpKey, pid int64, epoch int16, first int32, msgs []*ferry.Message) (int16, string) {
	ts := s.txns
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.byPID[pid]
	switch {
	case t == nil || t.id != txnID:
		return kerr.InvalidProducerIDMapping.Code, fmt.Sprintf("transactional batch of producer %d: transactional ID %q does not have it", pid, txnID)
	case epoch < t.epoch:
		return kerr.ProducerFenced.Code, fmt.Sprintf("producer %d epoch %d: fenced by epoch %d", pid, epoch, t.epoch)
	case epoch > t.epoch:
		return kerr.InvalidProducerEpoch.Code, fmt.Sprintf("producer %d epoch %d: current epoch is %d", pid, epoch, t.epoch)
	case !t.open || !t.parts[tp]:
		return kerr.InvalidTxnState.Code, fmt.Sprintf("transaction of %q: %s/%d was not added to it (AddPartitionsToTxn)", t.id, tp.topic, tp.partition)
	}
	end := int32((int64(first) + int64(len(msgs))) % (1 << 31))
	if next, ok := t.next[tp]; ok {
		switch {
		case first == next:
		case !seqAfter(first, next) && !seqAfter(end, next):
			return 0, "" // a retry of a batch already held
		default:
			return kerr.OutOfOrderSequenceNumber.Code, fmt.Sprintf("transaction of %q to %s/%d: sequence %d, expected %d", t.id, tp.topic, tp.partition, first, next)
		}
	}
	n := 0
	for _, m := range msgs {
		n += len(m.Key) + len(m.Payload) + 128 // the log's record overhead, with room
		for _, h := range m.Headers {
			n += len(h.Key) + len(h.Value) + 32
		}
	}
	if t.bytes+n > ts.max || len(t.msgs)+len(msgs) > maxLogBatch {
		t.failed = fmt.Sprintf("transaction of %q holds more than %d bytes or %d records (one atomic batch of the log): it can only be aborted", t.id, ts.max, maxLogBatch)
		return kerr.RecordListTooLarge.Code, t.failed
	}
	if t.failed != "" {
		return kerr.InvalidTxnState.Code, t.failed
	}
	t.next[tp] = end
	t.msgs = append(t.msgs, msgs...)
	t.bytes += n
	return 0, ""
}

func handleEndTxn(r *request) kmsg.Response {
	req := r.body.(*kmsg.EndTxnRequest)
	resp := kmsg.NewPtrEndTxnResponse()
	s := r.c.s
	ts := s.txns
	ts.mu.Lock()
	t, code := ts.checkLocked(req.TransactionalID, req.ProducerID, req.ProducerEpoch)
	if !r.may("transactional_id", req.TransactionalID, "write") {
		code = kerr.TransactionalIDAuthorizationFailed.Code
	}
	if code != 0 {
		ts.mu.Unlock()
		resp.ErrorCode = code
		return resp
	}
	if !t.open {
		// Nothing open: the retry of an end (the same answer, once it is
		// known), the other outcome (refused), or no transaction at all.
		ending, ended, last, code := t.ending, t.ended, t.lastCommit, t.lastCode
		ts.mu.Unlock()
		if !ended {
			return resp // an empty transaction: nothing to end
		}
		if ending != nil {
			<-ending
			ts.mu.Lock()
			code = t.lastCode
			ts.mu.Unlock()
		}
		if last != req.Commit {
			resp.ErrorCode = kerr.InvalidTxnState.Code
			return resp
		}
		resp.ErrorCode = code
		return resp
	}
	if req.Commit && t.failed != "" {
		why := t.failed
		ts.mu.Unlock()
		s.cfg.logger.Warn("transaction commit refused", "transactional_id", t.id, "reason", why)
		resp.ErrorCode = kerr.InvalidTxnState.Code
		return resp
	}
	b := &commitlog.Batch{Messages: t.msgs}
	var committing map[tpKey]int64
	if t.group != "" && len(t.offsets) > 0 {
		b.Group, committing = t.group, t.offsets
		for _, k := range slices.SortedFunc(maps.Keys(t.offsets), cmpTP) {
			b.Offsets = append(b.Offsets, commitlog.Offset{Topic: k.topic, Partition: k.partition, Offset: uint64(t.offsets[k])})
		}
	}
	group := t.group
	t.resetLocked()
	t.ended, t.lastCommit, t.lastCode = true, req.Commit, 0
	if !req.Commit || len(b.Messages) == 0 && len(b.Offsets) == 0 {
		t.ending = nil
		ts.mu.Unlock()
		return resp
	}
	ending := make(chan struct{})
	t.ending, t.committing, t.commitGrp = ending, committing, group
	ts.mu.Unlock()
	err := s.log.Commit(r.ctx, b)
	ts.mu.Lock()
	if err != nil {
		// The producer cannot know what to do but start again: fenced.
		s.cfg.logger.Warn("transaction commit failed; producer fenced", "transactional_id", req.TransactionalID, "err", err)
		t.lastCode = errorCode(err)
		t.epoch++
	}
	resp.ErrorCode = t.lastCode
	t.committing, t.commitGrp = nil, ""
	close(ending)
	ts.mu.Unlock()
	return resp
}

// fail marks the open transaction of id as able only to abort.
func (ts *txns) fail(id, why string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if t := ts.byID[id]; t != nil && t.open && t.failed == "" {
		t.failed = fmt.Sprintf("a produce of transaction %q was refused (%s): it can only be aborted", id, why)
	}
}

// pending reports whether an open or committing transaction holds an
// offset of group for tp (OffsetFetch with RequireStable then answers
// UNSTABLE_OFFSET_COMMIT, and the client asks again).
func (ts *txns) pending(group string, tp tpKey) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, t := range ts.byID {
		if _, ok := t.offsets[tp]; ok && t.open && t.group == group {
			return true
		}
		if _, ok := t.committing[tp]; ok && t.commitGrp == group {
			return true
		}
	}
	return false
}

// cmpTP orders partitions by topic, then number.
func cmpTP(a, b tpKey) int {
	return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.partition, b.partition))
}
