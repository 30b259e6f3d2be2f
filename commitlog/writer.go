package commitlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// Offset is a consumer group's committed position in one partition: the
// next offset the group will read.
type Offset struct {
	Topic     string
	Partition int32
	Offset    uint64
}

// Batch is an atomic unit of writing: either all of its messages and
// offsets are in the log after a crash, or none.
type Batch struct {
	// Messages to append (set by the caller). The log sets each message's
	// ID (if zero), Time (if zero), Partition (unless PinPartition) and
	// Offset.
	Messages []*ferry.Message
	// Group and Offsets (set by the caller) commit consumer offsets in the
	// same batch, which is how consume-transform-produce becomes atomic.
	Group   string
	Offsets []Offset
	// Duplicates is set by the log: how many Messages had an ID already in
	// their topic's deduplication window. They were not written again; their
	// Partition and Offset are those of the original.
	Duplicates int
	// Duplicate is set by the log when Duplicates > 0: which Messages
	// were duplicates (by index; nil when none was).
	Duplicate []bool
	// Follows, when set (by the caller), makes the append conditional on
	// what the log holds: the batch is written only if a message with one
	// of these IDs is in the deduplication window of the first message's
	// topic (appended before, in this run or an earlier one). Otherwise
	// nothing of it is written and the append fails with ErrNotFollowing.
	// A producer that numbers its batches names the record before the
	// batch (and the batch's own first, for a retry of one written before),
	// so that no batch is written after a gap.
	Follows []ferry.ID
	// After, when set (by the caller), makes the append conditional on an
	// earlier append to this log: the batch is written only if After was
	// (its messages appended, or all of them duplicates); else it fails
	// with ErrNotFollowing. After must have been queued before this batch
	// (Commit or CommitAsync returned): the writer decides both in queue
	// order, so a batch queued behind one that fails is never written
	// after the gap. The writer clears After once it has decided.
	After *Batch
	// written is set by the writer once the batch's messages have
	// offsets (read only by the writer, for After).
	written bool
}

// ErrNotFollowing is the error of an append whose Batch.Follows names a
// message that is not in the log's deduplication window.
var ErrNotFollowing = errors.New("commitlog: the message the batch follows is not in the log")

type request struct {
	batch      *Batch
	ctrl       *controlOp // topic creation or deletion, written alone
	reloc      []byte     // a batch prepared by the cleaner, written as is
	sync       bool       // only fsync what was written so far
	checkpoint bool       // fsync and write a checkpoint (the cleaner, before deleting)
	size       int        // upper bound of the encoded size of batch
	sections   int        // upper bound of the message sections of batch, as size assumes
	err        error
	done       chan struct{}       // closed when finished (synchronous callers)
	promise    func(*Batch, error) // called when finished (AppendAsync)
	sem        *semaphore.Weighted // holds reserved bytes of the queue budget until finished
	reserved   int64
	start      time.Time // when the append was made (only with an Observer)
}

// finish reports a request's outcome to its caller and returns its bytes
// to the queue budget.
func (r *request) finish() {
	if r.sem != nil {
		r.sem.Release(r.reserved)
		r.sem = nil
	}
	if r.promise != nil {
		r.promise(r.batch, r.err)
		return
	}
	close(r.done)
}

// writerScratch is reused by the writer across groups so that the steady
// state allocates nothing per message.
type writerScratch struct {
	group   []*request
	buckets []*bucket
	byPart  map[*partition]*bucket
	free    []*bucket
	carry   *request
}

type bucket struct {
	t    *topic
	idx  int32
	p    *partition
	msgs []*ferry.Message
}

// MessageError is the refusal of one message of a batch: Index is its
// position in Batch.Messages (Append's arguments), Err why. Nothing of the
// batch was written.
type MessageError struct {
	Index int
	Err   error
}

// Error implements error.
func (e *MessageError) Error() string {
	return fmt.Sprintf("commitlog: message %d: %v", e.Index, e.Err)
}

// Unwrap returns why the message was refused.
func (e *MessageError) Unwrap() error { return e.Err }

// Append writes messages atomically (see Commit).
func (l *Log) Append(ctx context.Context, msgs ...*ferry.Message) error {
	return l.Commit(ctx, &Batch{Messages: msgs})
}

// Commit writes b atomically and returns once it is durable as the log's
// durability mode promises. ctx bounds only the wait for room in the
// queue: once queued, the batch is written whatever happens to ctx, so a
// canceled Commit may still appear in the log.
//
// Errors: ferry.ErrInvalidArgument (oversize message, bad topic name,
// batch too large), ferry.ErrTopicNotFound, ferry.ErrClosed,
// ferry.ErrLogFailed (a write or fsync failed; nothing more is accepted
// until the log is reopened).
func (l *Log) Commit(ctx context.Context, b *Batch) error {
	r, err := l.prepare(b)
	if err != nil {
		return err
	}
	return l.submit(ctx, r)
}

// TryCommit is Commit that never waits for room: when the queue is full it
// returns ferry.ErrBackpressure at once and writes nothing.
func (l *Log) TryCommit(b *Batch) error {
	r, err := l.prepare(b)
	if err != nil {
		return err
	}
	r.done = make(chan struct{})
	r.reserved = min(int64(r.size), l.cfg.queueBytes)
	if !l.queueBytes.TryAcquire(r.reserved) {
		return fmt.Errorf("commitlog: %d bytes of appends already queued: %w", l.cfg.queueBytes, ferry.ErrBackpressure)
	}
	r.sem = l.queueBytes
	queued, err := l.tryEnqueue(r)
	if !queued {
		r.finish()
		if err != nil {
			return err
		}
		return fmt.Errorf("commitlog: %d appends already queued: %w", cap(l.reqs), ferry.ErrBackpressure)
	}
	<-r.done
	return r.err
}

// AppendAsync queues a batch of messages without waiting for it to be
// written: promise is called once with the batch and the outcome, after the
// batch is as durable as the durability mode promises (or failed). Keeping
// many appends in flight is how a single publisher reaches group-commit
// throughput. Promises are called in append order from the log's writer
// goroutine, so they must be quick and must not call back into the log
// synchronously. ctx bounds only the wait for room in the queue.
func (l *Log) AppendAsync(ctx context.Context, promise func(*Batch, error), msgs ...*ferry.Message) {
	l.CommitAsync(ctx, &Batch{Messages: msgs}, promise)
}

// CommitAsync is Commit without waiting: b is queued behind every batch
// queued before it returns (the log writes them in queue order), and
// promise is called once, as for AppendAsync. A caller that must order
// its batches in the log, such as a group member whose offsets must never
// go back, queues them one after the other and waits outside its lock.
func (l *Log) CommitAsync(ctx context.Context, b *Batch, promise func(*Batch, error)) {
	r, err := l.prepare(b)
	if err != nil {
		promise(b, err)
		return
	}
	r.promise = promise
	if err := l.reserve(ctx, r); err != nil {
		promise(b, err)
		return
	}
	if err := l.enqueue(ctx, r); err != nil {
		r.err = err
		r.finish() // calls the promise, once
	}
}

// nameMessages gives each message without an ID a fresh one, made
// together with the others of the batch (ferry.NewIDs).
func nameMessages(msgs []*ferry.Message) {
	var buf [64]ferry.ID
	var ids []ferry.ID
	for i, m := range msgs {
		if !m.ID.IsZero() {
			continue
		}
		if len(ids) == 0 {
			n := 0
			for _, later := range msgs[i:] {
				if later.ID.IsZero() {
					if n++; n == len(buf) {
						break
					}
				}
			}
			ids = buf[:n]
			ferry.NewIDs(ids)
		}
		m.ID, ids = ids[0], ids[1:]
	}
}

// prepare checks what can be checked without the writer's state, and
// fills in IDs (only once the batch passed: a refused one is left as it
// was).
func (l *Log) prepare(b *Batch) (*request, error) {
	if err := l.writable(); err != nil {
		return nil, err
	}
	if len(b.Messages) == 0 && len(b.Offsets) == 0 {
		return nil, fmt.Errorf("commitlog: empty batch: %w", ferry.ErrInvalidArgument)
	}
	if len(b.Messages) > maxMessagesInGroup {
		return nil, fmt.Errorf("commitlog: batch of %d messages: at most %d allowed: %w", len(b.Messages), maxMessagesInGroup, ferry.ErrInvalidArgument)
	}
	total := 0
	for i, m := range b.Messages {
		if m == nil {
			return nil, &MessageError{Index: i, Err: fmt.Errorf("nil: %w", ferry.ErrInvalidArgument)}
		}
		if err := ValidateTopicName(m.Topic); err != nil {
			return nil, &MessageError{Index: i, Err: err}
		}
		n := len(m.Key) + len(m.Payload)
		for _, h := range m.Headers {
			n += len(h.Key) + len(h.Value)
		}
		if n > l.cfg.maxMessageBytes {
			return nil, &MessageError{Index: i, Err: fmt.Errorf("%d bytes to %q (key, payload and headers): the limit is %d: %w", n, m.Topic, l.cfg.maxMessageBytes, ferry.ErrInvalidArgument)}
		}
		total += recordSize(m)
	}
	if len(b.Offsets) > 0 && (b.Group == "" || len(b.Group) > 255) {
		return nil, fmt.Errorf("commitlog: offsets need a consumer group name of 1 to 255 bytes, got %q: %w", b.Group, ferry.ErrInvalidArgument)
	}
	for i, o := range b.Offsets {
		if o.Offset == deletedOffset {
			return nil, fmt.Errorf("commitlog: offset %d of %s/%d is %d: no partition reaches it: %w", i, o.Topic, o.Partition, o.Offset, ferry.ErrInvalidArgument)
		}
	}
	r := &request{batch: b}
	r.sections = l.sectionBound(b)
	// An upper bound of the encoded size, checked before anything is
	// queued: the writer assigns offsets and dedup entries as it encodes,
	// so it must never find a batch too large afterwards.
	total += sectionHeaderSize * r.sections
	if len(b.Offsets) > 0 {
		total += sectionHeaderSize + len(b.Offsets)*offsetRecordSize(b.Group)
	}
	if total > l.cfg.maxBatchBytes {
		return nil, fmt.Errorf("commitlog: batch of %d messages and %d offsets encodes to at most %d bytes: the limit is %d (WithMaxBatchBytes): %w", len(b.Messages), len(b.Offsets), total, l.cfg.maxBatchBytes, ferry.ErrInvalidArgument)
	}
	nameMessages(b.Messages)
	b.Duplicates, b.Duplicate, b.written = 0, nil, false
	r.size = total
	if l.cfg.observer != nil {
		r.start = time.Now()
	}
	return r, nil
}

// sectionBound returns how many sections b's messages can take: one per
// partition they go to, at most one per message. It reads the topics as
// they are now; route checks the bound again against the topics the
// writer sees.
func (l *Log) sectionBound(b *Batch) int {
	if len(b.Messages) <= 1 {
		return len(b.Messages)
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	return sectionsFor(b, l.topics)
}

// sectionsFor bounds the sections of b's messages given topics.
func sectionsFor(b *Batch, topics map[string]*topic) int {
	n := 0
	seen := ""
	for i, m := range b.Messages {
		if i > 0 && m.Topic == seen {
			continue
		}
		t := topics[m.Topic]
		if t == nil || i > 0 {
			// Several topics (or an unknown one): one section a message.
			return len(b.Messages)
		}
		seen = m.Topic
		n = len(t.parts)
	}
	return min(n, len(b.Messages))
}

// offsetRecordSize bounds the encoded size of one consumer-offset record
// of group (see controlOp.encode and appendRecord).
func offsetRecordSize(group string) int {
	payload := 1 + binary.MaxVarintLen64 + len(group) + 4 + 4 + 8
	return recordSize(&ferry.Message{Payload: make([]byte, payload)})
}

// Healthy reports whether the log accepts appends: it returns why not
// (read-only, closed, or stopped by a write or fsync error).
func (l *Log) Healthy() error { return l.writable() }

func (l *Log) writable() error {
	if l.cfg.readOnly {
		return fmt.Errorf("commitlog: log opened read-only: %w", ferry.ErrInvalidArgument)
	}
	if l.closed.Load() {
		return ferry.ErrClosed
	}
	return l.failedErr()
}

// submit queues a request and waits until the writer has finished it.
func (l *Log) submit(ctx context.Context, r *request) error {
	if err := l.writable(); err != nil {
		return err
	}
	r.done = make(chan struct{})
	if err := l.reserve(ctx, r); err != nil {
		return err
	}
	if err := l.enqueue(ctx, r); err != nil {
		r.finish()
		return err
	}
	<-r.done
	return r.err
}

// reserve takes the request's bytes from the queue budget, waiting for
// room until ctx ends.
func (l *Log) reserve(ctx context.Context, r *request) error {
	if r.size == 0 {
		return nil
	}
	// A batch larger than the whole budget waits for the queue to empty.
	r.reserved = min(int64(r.size), l.cfg.queueBytes)
	if err := l.queueBytes.Acquire(ctx, r.reserved); err != nil {
		return fmt.Errorf("commitlog: waiting for room in the append queue: %w", err)
	}
	r.sem = l.queueBytes
	return nil
}

// enqueue waits for room in the writer's queue. Once queued, a request is
// always finished, whatever happens to ctx: by the writer, or by Close
// with ferry.ErrClosed if the writer had stopped.
//
// Senders hold sendMu shared while they send, and Close takes it
// exclusively after closing stop: so once Close holds it, every request
// that will ever be queued is in the channel, and Close can finish what
// the writer left there.
func (l *Log) enqueue(ctx context.Context, r *request) error {
	l.sendMu.RLock()
	defer l.sendMu.RUnlock()
	if l.closed.Load() {
		return ferry.ErrClosed
	}
	select {
	case l.reqs <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.stop:
		return ferry.ErrClosed
	}
}

// tryEnqueue queues r if there is room at once.
func (l *Log) tryEnqueue(r *request) (queued bool, err error) {
	l.sendMu.RLock()
	defer l.sendMu.RUnlock()
	if l.closed.Load() {
		return false, ferry.ErrClosed
	}
	select {
	case l.reqs <- r:
		return true, nil
	default:
		return false, nil
	}
}

// run is the writer goroutine.
func (l *Log) run() {
	defer close(l.stopped)
	if l.pipelined() {
		defer close(l.syncJobs)
	}
	var tick <-chan time.Time
	if l.cfg.durability == DurabilityInterval {
		t := time.NewTicker(l.cfg.syncInterval)
		defer t.Stop()
		tick = t.C
	}
	l.scratch.byPart = map[*partition]*bucket{}
	for {
		l.takeSynced()
		for len(l.pipe) >= l.cfg.maxInflight {
			l.synced(<-l.syncDone)
		}
		first := l.takeCarry()
		if first == nil {
			select {
			case first = <-l.reqs:
			case r := <-l.syncDone:
				if l.synced(r) > 1 {
					runtime.Gosched()
				}
				continue
			case <-tick:
				if l.dirty && l.failedErr() == nil {
					if err := l.syncActive(); err != nil {
						l.fail(err)
					}
				}
				continue
			case <-l.stop:
				l.drainOnStop()
				if l.pipelined() {
					l.drainPipe()
				}
				return
			}
		}
		g := l.collect(first)
		if l.pipelined() && l.syncing && g[0].batch != nil && l.scratch.carry == nil && groupBytes(g) < pipelineAheadBytes {
			// A small group while an fsync runs: synchronous callers
			// that fsync is about to acknowledge would append again just
			// after it was encoded, and wait for a group more. It waits
			// for the fsync instead, lets them run, and takes them in.
			if l.synced(<-l.syncDone) > 1 {
				runtime.Gosched()
			}
			g = l.collectMore(g)
		}
		l.process(g)
		if waiters(g) > 1 {
			// The callers just acknowledged are runnable on this P; most
			// append again at once. Letting them run before collecting
			// the next group puts them in it, instead of leaving them
			// for the group after: with N synchronous appenders the
			// groups would otherwise settle at N/2, each appender
			// waiting for two fsyncs per append.
			runtime.Gosched()
		}
		// The scratch group is reused: the requests it still points to
		// (and through them their callers' messages, a whole produce
		// request's buffer for ferry serve) must not stay alive.
		clear(g)
	}
}

// drainOnStop writes what was queued before Close, including a request
// that collect held back for the next group. Requests still sent while it
// runs are finished by Close (see enqueue).
func (l *Log) drainOnStop() {
	for {
		r := l.takeCarry()
		if r == nil {
			select {
			case r = <-l.reqs:
			default:
				return
			}
		}
		l.process(l.collect(r))
	}
}

// takeCarry returns the request collect held back for the next group, if
// any, and forgets it.
func (l *Log) takeCarry() *request {
	r := l.scratch.carry
	l.scratch.carry = nil
	return r
}

// waiters counts the requests of g whose callers wait for the outcome
// (not AppendAsync promises, which the writer calls itself).
func waiters(g []*request) int {
	n := 0
	for _, r := range g {
		if r.done != nil {
			n++
		}
	}
	return n
}

// collect gathers first and whatever else is queued, up to the group size
// limit. Control and cleaner requests are written alone.
func (l *Log) collect(first *request) []*request {
	g := append(l.scratch.group[:0], first)
	if first.batch == nil {
		return g
	}
	return l.collectMore(g)
}

// groupBytes is the encoded size bound of the appends of g.
func groupBytes(g []*request) int {
	n := 0
	for _, r := range g {
		n += r.size
	}
	return n
}

// collectMore adds to the group of appends g whatever else is queued, up
// to the group size limit.
func (l *Log) collectMore(g []*request) []*request {
	size, msgs := 0, 0
	for _, r := range g {
		size, msgs = size+r.size, msgs+len(r.batch.Messages)
	}
	for size < l.cfg.maxGroupBytes && l.scratch.carry == nil {
		select {
		case r := <-l.reqs:
			if r.batch == nil || msgs+len(r.batch.Messages) > maxMessagesInGroup {
				l.scratch.carry = r
				return g
			}
			g = append(g, r)
			size += r.size
			msgs += len(r.batch.Messages)
		default:
			return g
		}
	}
	return g
}

func (l *Log) process(g []*request) {
	l.scratch.group = g
	if g[0].batch == nil && l.pipelined() {
		l.drainPipe() // it runs with nothing in flight
	}
	if err := l.failedErr(); err != nil {
		respond(g, err)
		return
	}
	switch {
	case g[0].ctrl != nil:
		l.processControl(g[0])
	case g[0].sync:
		if err := l.syncActive(); err != nil {
			g[0].err = l.fail(err)
		}
		g[0].finish()
	case g[0].reloc != nil:
		g[0].err = l.writeBatch(g[0].reloc)
		g[0].finish()
	case g[0].checkpoint:
		if err := l.syncActive(); err != nil {
			g[0].err = l.fail(err)
		} else {
			g[0].err = l.writeCheckpoint(l.active.id, uint64(l.activeSize))
		}
		g[0].finish()
	default:
		l.processGroup(g)
	}
}

// observeCommit reports a group commit begun at t0, and the latency of
// each of its appends, to the Observer (if any). err is the group's.
func (l *Log) observeCommit(g []*request, live, msgs, bytes int, t0 time.Time, fsync time.Duration, err error) {
	obs := l.cfg.observer
	if obs == nil {
		return
	}
	done := time.Now()
	obs.GroupCommit(live, msgs, bytes, done.Sub(t0), fsync)
	for _, r := range g {
		if r.err == nil && err == nil {
			obs.Appended(done.Sub(r.start))
		}
	}
}

func respond(g []*request, err error) {
	for _, r := range g {
		if r.err == nil {
			r.err = err
		}
		r.finish()
	}
}

// checkFollows refuses b if it follows a message or a batch the log does
// not hold (see Batch.Follows and Batch.After). It runs in the writer,
// after the batches queued before b were given their offsets and dedup
// entries.
func (l *Log) checkFollows(b *Batch, now int64) error {
	after := b.After
	b.After = nil // decided: a chain of batches must not keep every one alive
	if after != nil && !after.written {
		return fmt.Errorf("commitlog: the batch it follows was not written: %w", ErrNotFollowing)
	}
	if len(b.Follows) == 0 || len(b.Messages) == 0 {
		return nil
	}
	t := l.topics[b.Messages[0].Topic]
	if t.dedup == nil {
		return fmt.Errorf("commitlog: topic %q keeps no deduplication window, so whether message %s was appended is not known: %w", t.name, b.Follows[0], ErrNotFollowing)
	}
	for _, id := range b.Follows {
		if _, ok := t.dedup.lookup(id, now); ok {
			return nil
		}
	}
	return fmt.Errorf("commitlog: message %s, which the batch follows, is not in topic %q's deduplication window: %w", b.Follows[0], t.name, ErrNotFollowing)
}

// processGroup encodes every batch of the group into one log batch, writes
// it, fsyncs once, makes it visible and acknowledges every waiter.
func (l *Log) processGroup(g []*request) {
	now := l.cfg.now().UnixNano()
	sc := &l.scratch
	sc.buckets = sc.buckets[:0]
	clear(sc.byPart)
	var offsets []controlOp
	live := 0
	for _, r := range g {
		if r.err = l.route(r); r.err != nil {
			continue
		}
		if r.err = l.checkFollows(r.batch, now); r.err != nil {
			continue
		}
		live++
		for _, o := range r.batch.Offsets {
			t := l.topics[o.Topic]
			offsets = append(offsets, controlOp{op: opCommitOffset, group: r.batch.Group, topicID: t.id, partition: uint32(o.Partition), offset: o.Offset})
		}
		for i, m := range r.batch.Messages {
			t := l.topics[m.Topic]
			if t.dedup != nil {
				if h, dup := t.dedup.lookup(m.ID, now); dup {
					m.Partition, m.Offset = h.partition, h.offset
					r.batch.Duplicates++
					if r.batch.Duplicate == nil {
						r.batch.Duplicate = make([]bool, len(r.batch.Messages))
					}
					r.batch.Duplicate[i] = true
					continue
				}
			}
			p := t.parts[m.Partition]
			m.Offset = p.next
			p.next++
			if m.Time.IsZero() {
				m.Time = time.Unix(0, now)
			}
			if t.dedup != nil {
				t.dedup.insert(m.ID, dedupHit{partition: m.Partition, offset: m.Offset}, now)
			}
			bk := sc.byPart[p]
			if bk == nil {
				bk = l.newBucket(t, m.Partition, p)
			}
			bk.msgs = append(bk.msgs, m)
		}
		r.batch.written = true
	}
	if live == 0 {
		if l.pipelined() {
			l.awaitInflight(g) // refusals too are answered in append order
		} else {
			respond(g, nil)
		}
		return
	}
	if len(sc.buckets) == 0 && len(offsets) == 0 {
		// Every message was a duplicate, perhaps of one still in flight.
		if l.pipelined() {
			l.awaitInflight(g)
		} else {
			respond(g, nil)
		}
		return
	}
	buf := l.wbuf[:0]
	if l.pipelined() {
		buf = l.takeBuf()
	}
	buf = append(buf, make([]byte, batchHeaderSize)...)
	nsect := 0
	for _, bk := range sc.buckets {
		buf = encodeSection(buf, bk.t.id, uint32(bk.idx), bk.msgs, now)
		nsect++
	}
	if len(offsets) > 0 {
		buf = encodeControlSection(buf, offsets, now)
		nsect++
	}
	putBatchHeader(buf, 0, nsect, now)
	msgs := 0
	for _, bk := range sc.buckets {
		msgs += len(bk.msgs)
	}
	if l.pipelined() {
		l.writeGroup(g, buf, live, msgs)
	} else if l.wbuf = buf; l.cfg.observer != nil {
		l.lastFsync = 0
		t0 := time.Now()
		err := l.writeBatch(buf)
		l.observeCommit(g, live, msgs, len(buf), t0, time.Duration(l.lastFsync), err)
		respond(g, err)
	} else {
		respond(g, l.writeBatch(buf))
	}
	for _, bk := range sc.buckets {
		clear(bk.msgs) // nor the messages, through a reused bucket
		bk.msgs = bk.msgs[:0]
		sc.free = append(sc.free, bk)
	}
	if cap(l.wbuf) > 2*l.cfg.maxGroupBytes {
		l.wbuf = nil // do not pin a buffer grown by one huge batch
	}
}

func (l *Log) newBucket(t *topic, idx int32, p *partition) *bucket {
	sc := &l.scratch
	var bk *bucket
	if n := len(sc.free); n > 0 {
		bk, sc.free = sc.free[n-1], sc.free[:n-1]
	} else {
		bk = &bucket{}
	}
	bk.t, bk.idx, bk.p = t, idx, p
	sc.byPart[p] = bk
	sc.buckets = append(sc.buckets, bk)
	return bk
}

// route checks a batch against the current topics and sets each message's
// partition. It changes nothing if it fails.
func (l *Log) route(r *request) error {
	b := r.batch
	for i, m := range b.Messages {
		t := l.topics[m.Topic]
		if t == nil {
			return &MessageError{Index: i, Err: fmt.Errorf("topic %q: %w", m.Topic, ferry.ErrTopicNotFound)}
		}
		if t.config.Compact && len(m.Key) == 0 {
			// Compaction keeps the latest message of each key: keyless
			// messages would all count as one key and all but the last
			// would vanish. Kafka refuses them too.
			return &MessageError{Index: i, Err: fmt.Errorf("topic %q is compacted, so every message needs a key (the latest message of each key is kept): %w", m.Topic, ferry.ErrInvalidArgument)}
		}
		if m.PinPartition && (m.Partition < 0 || int(m.Partition) >= len(t.parts)) {
			return &MessageError{Index: i, Err: fmt.Errorf("partition %d of topic %q, which has partitions 0 to %d: %w", m.Partition, m.Topic, len(t.parts)-1, ferry.ErrInvalidArgument)}
		}
	}
	for i, o := range b.Offsets {
		t := l.topics[o.Topic]
		if t == nil {
			return fmt.Errorf("commitlog: offset %d: topic %q: %w", i, o.Topic, ferry.ErrTopicNotFound)
		}
		if o.Partition < 0 || int(o.Partition) >= len(t.parts) {
			return fmt.Errorf("commitlog: offset %d: partition %d of topic %q, which has partitions 0 to %d: %w", i, o.Partition, o.Topic, len(t.parts)-1, ferry.ErrInvalidArgument)
		}
	}
	// prepare bounded the sections by the topics it saw; if a topic was
	// recreated with more partitions since, the bound may be short.
	if n := len(b.Messages); n > r.sections {
		n = sectionsFor(b, l.topics)
		if size := r.size + max(0, n-r.sections)*sectionHeaderSize; size > l.cfg.maxBatchBytes {
			return fmt.Errorf("commitlog: batch of %d messages encodes to at most %d bytes: the limit is %d (WithMaxBatchBytes): %w", len(b.Messages), size, l.cfg.maxBatchBytes, ferry.ErrInvalidArgument)
		}
	}
	for _, m := range b.Messages {
		if m.PinPartition {
			continue
		}
		t := l.topics[m.Topic]
		if m.Key != nil {
			m.Partition = ferry.PartitionForKey(m.Key, len(t.parts))
		} else {
			m.Partition = int32(t.rr % uint32(len(t.parts)))
			t.rr++
		}
	}
	return nil
}

// encodeSection appends a section holding msgs (offsets already assigned,
// ascending) to buf.
func encodeSection(buf []byte, topicID, part uint32, msgs []*ferry.Message, appendTime int64) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, sectionHeaderSize)...)
	first := msgs[0].Offset
	maxTime := msgs[0].Time.UnixNano()
	for _, m := range msgs[1:] {
		maxTime = max(maxTime, m.Time.UnixNano())
	}
	for _, m := range msgs {
		buf = appendRecord(buf, m, m.Offset-first, maxTime)
	}
	putSectionHeader(buf[start:], sectionHeader{
		topic: topicID, partition: part, first: first, last: msgs[len(msgs)-1].Offset,
		count: uint32(len(msgs)), bodyLen: uint32(len(buf) - start - sectionHeaderSize), maxTime: maxTime,
	})
	return buf
}

func encodeControlSection(buf []byte, ops []controlOp, now int64) []byte {
	msgs := make([]*ferry.Message, len(ops))
	for i, op := range ops {
		msgs[i] = &ferry.Message{Offset: uint64(i), Time: time.Unix(0, now), Payload: op.encode(nil)}
	}
	return encodeSection(buf, controlTopicID, 0, msgs, now)
}

// writeBatch writes one encoded batch to the active segment (rolling first
// if it would not fit), fsyncs as the durability mode says, and applies it.
// Any write or fsync error fails the log.
func (l *Log) writeBatch(buf []byte) error {
	if int64(len(buf)) > l.cfg.segmentBytes-batchHeaderSize {
		// prepare bounds every batch so that this cannot happen. If it
		// does, offsets and dedup entries were already assigned to what
		// will not be written: stop rather than acknowledge on top of a
		// state the log does not hold (reopening rebuilds it).
		return l.fail(fmt.Errorf("commitlog: bug: group of %d bytes exceeds the segment size %d", len(buf), l.cfg.segmentBytes))
	}
	if l.activeSize > 0 && l.activeSize+int64(len(buf)) > l.cfg.segmentBytes {
		if err := l.roll(); err != nil {
			return l.fail(err)
		}
	}
	pos := l.activeSize
	if err := l.zeroAhead(len(buf)); err != nil {
		return l.fail(err)
	}
	if _, err := l.active.f.Write(buf); err != nil {
		return l.fail(fmt.Errorf("write %s at %d: %w", l.active.path, pos, err))
	}
	l.activeSize += int64(len(buf))
	l.dirty = true
	if l.cfg.durability == DurabilityAlways {
		if err := l.syncActive(); err != nil {
			return l.fail(err)
		}
	}
	h, err := decodeBatchHeaderUnchecked(buf)
	if err == nil {
		err = l.applyBatch(l.active.id, uint32(pos), h, buf)
	}
	if err != nil {
		// The bytes are durable but could not be applied: a bug. Stop
		// rather than acknowledge something readers cannot see.
		return l.fail(fmt.Errorf("apply batch at %s:%d: %w", l.active.path, pos, err))
	}
	return nil
}

func decodeBatchHeaderUnchecked(b []byte) (batchHeader, error) {
	n, err := peekBatchLength(b)
	if err != nil {
		return batchHeader{}, err
	}
	return batchHeader{length: n, version: b[12], flags: b[13], sections: uint16(b[14]) | uint16(b[15])<<8, appendTime: int64(binary.LittleEndian.Uint64(b[16:]))}, nil
}

func (l *Log) syncActive() error {
	if !l.dirty {
		return nil
	}
	var t0 time.Time
	if l.cfg.observer != nil {
		t0 = time.Now()
	}
	if err := l.active.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", l.active.path, err)
	}
	if l.cfg.observer != nil {
		l.lastFsync = int64(time.Since(t0))
	}
	l.dirty = false
	return nil
}

const (
	// zeroAheadBytes is how far ahead of its end zeroAhead zeroes the
	// active segment: 1 MiB serves some hundred small groups.
	zeroAheadBytes = 1 << 20
	// zeroAheadMaxGroup is the largest group that zeroes ahead.
	zeroAheadMaxGroup = 64 << 10
	// zeroBlock is the size of one write of zeros.
	zeroBlock = 64 << 10
)

// zeroAhead prepares the append of a group of n bytes. When the group is
// small and would grow the file, it first writes zeros past the end of the
// active segment (zeroAheadBytes of them), so that the fsyncs of this and
// the next small groups overwrite blocks the file already has. On ext4
// (the disk of BENCHMARKS.md) an fsync that grows a file also commits the
// filesystem's journal, one that overwrites flushes the data only: 8 KiB
// write+fsync took a median 0.28–0.30 ms against 0.41–0.43 ms when
// appending (ferry bench prints both probes). Large groups append as they
// are: their fsync's fixed cost is small beside the data, and zeroing
// would double the bytes written. WithZeroAhead(false) turns it off.
//
// The zeros are covered by the group's own fsync; a crash leaves them as
// the segment's tail, which recovery cuts (Recovery.ZeroTailBytes), as do
// a roll and Close (trimZeroed), so only the active segment ever has one.
func (l *Log) zeroAhead(n int) error {
	from, to := l.planZeroAhead(n)
	if to <= from {
		return nil
	}
	if l.zeros == nil {
		l.zeros = make([]byte, zeroBlock)
	}
	return writeZeros(l.active.f, l.active.path, l.zeros, from, to, l.activeSize)
}

// planZeroAhead decides the zeros to write ahead of a group of n bytes
// about to be written at the active segment's end: [from, to), empty if
// none. It counts them as written (zeroedTo).
func (l *Log) planZeroAhead(n int) (from, to int64) {
	if l.cfg.noZeroAhead || l.cfg.durability != DurabilityAlways || n > zeroAheadMaxGroup {
		return 0, 0
	}
	end := l.activeSize + int64(n)
	if end <= l.zeroedTo {
		return 0, 0
	}
	from = max(l.zeroedTo, l.activeSize) // the end of the file
	to = min(from+zeroAheadBytes, l.cfg.segmentBytes)
	if to < end {
		return 0, 0 // the segment is about to roll
	}
	l.zeroedTo = to
	l.dirty = true
	return from, to
}

// writeZeros writes zeros over [from, to) of f and leaves its offset at
// back, where the next write goes.
func writeZeros(f vfs.File, path string, zeros []byte, from, to, back int64) error {
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s to %d: %w", path, from, err)
	}
	for at := from; at < to; {
		k := min(int64(len(zeros)), to-at)
		if _, err := f.Write(zeros[:k]); err != nil {
			return fmt.Errorf("write zeros ahead in %s at %d: %w", path, at, err)
		}
		at += k
	}
	if _, err := f.Seek(back, io.SeekStart); err != nil {
		return fmt.Errorf("seek %s to %d: %w", path, back, err)
	}
	return nil
}

// trimZeroed cuts the zeros written ahead of the active segment's end, so
// that a segment the writer leaves (at a roll or Close) ends with its last
// batch. The fsync that follows makes the cut durable.
func (l *Log) trimZeroed() error {
	if l.zeroedTo <= l.activeSize {
		return nil
	}
	if err := l.active.f.Truncate(l.activeSize); err != nil {
		return fmt.Errorf("truncate the zeros after %s at %d: %w", l.active.path, l.activeSize, err)
	}
	l.zeroedTo = 0
	l.dirty = true
	return nil
}

// roll makes the active segment durable, checkpoints the state as of its
// end, and starts the next segment.
func (l *Log) roll() error {
	if err := l.trimZeroed(); err != nil {
		return err
	}
	if err := l.syncActive(); err != nil {
		return err
	}
	next := l.active.id + 1
	if err := l.writeCheckpoint(next, 0); err != nil {
		l.cfg.logger.Warn("checkpoint at segment roll failed; recovery will scan more", "err", err)
	}
	return l.createSegment(next)
}

// processControl writes a topic creation or deletion in a batch of its own.
func (l *Log) processControl(r *request) {
	defer r.finish()
	op := *r.ctrl
	switch op.op {
	case opCreateTopic:
		if l.topics[op.name] != nil {
			r.err = fmt.Errorf("commitlog: create topic %q: %w", op.name, ferry.ErrTopicExists)
			return
		}
		op.topicID = l.nextTopicID
	case opDeleteTopic:
		t := l.topics[op.name]
		if t == nil {
			r.err = fmt.Errorf("commitlog: delete topic %q: %w", op.name, ferry.ErrTopicNotFound)
			return
		}
		op.topicID = t.id
	case opAlterTopic:
		t := l.topics[op.name]
		if t == nil {
			r.err = fmt.Errorf("commitlog: alter topic %q: %w", op.name, ferry.ErrTopicNotFound)
			return
		}
		if r.err = alterable(op.name, t.config, op.config); r.err != nil {
			return
		}
		op.topicID = t.id
	case opDeleteOffsets:
		if op.name != "" {
			t := l.topics[op.name]
			if t == nil {
				r.err = fmt.Errorf("commitlog: delete offsets of %q on %q: %w", op.group, op.name, ferry.ErrTopicNotFound)
				return
			}
			op.topicID = t.id
		}
	}
	now := l.cfg.now().UnixNano()
	buf := encodeControlSection(make([]byte, batchHeaderSize), []controlOp{op}, now)
	putBatchHeader(buf, 0, 1, now)
	r.err = l.writeBatch(buf)
}

// CreateTopic creates a topic. Errors: ferry.ErrTopicExists,
// ferry.ErrInvalidArgument for a bad name or config.
func (l *Log) CreateTopic(ctx context.Context, name string, c TopicConfig) error {
	if err := ValidateTopicName(name); err != nil {
		return fmt.Errorf("commitlog: create topic: %w", err)
	}
	return l.createTopic(ctx, name, c)
}

// createTopic creates a topic without the name rules that reserve "__"
// names, for ferry's own topics.
func (l *Log) createTopic(ctx context.Context, name string, c TopicConfig) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return fmt.Errorf("commitlog: create topic %q: %w", name, err)
	}
	return l.submit(ctx, &request{ctrl: &controlOp{op: opCreateTopic, name: name, config: c}})
}

// DeleteTopic deletes a topic and its consumer offsets. Its data is
// reclaimed by the cleaner.
func (l *Log) DeleteTopic(ctx context.Context, name string) error {
	return l.submit(ctx, &request{ctrl: &controlOp{op: opDeleteTopic, name: name}})
}

// AlterTopic changes a topic's retention: c is the whole new config
// (start from Topic(name).Config), of which RetentionAge, RetentionBytes
// and TombstoneRetention may differ (zero fields take their defaults, as
// in CreateTopic). The partitions, compaction and deduplication are fixed at
// creation: a c that changes them is refused with
// ferry.ErrInvalidArgument, naming what. The cleaner applies the new
// retention on its next pass.
func (l *Log) AlterTopic(ctx context.Context, name string, c TopicConfig) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return fmt.Errorf("commitlog: alter topic %q: %w", name, err)
	}
	return l.submit(ctx, &request{ctrl: &controlOp{op: opAlterTopic, name: name, config: c}})
}

// CheckAlterTopic reports the error AlterTopic would return for c, and
// changes nothing (a validate-only request).
func (l *Log) CheckAlterTopic(name string, c TopicConfig) error {
	c = c.withDefaults()
	if err := c.validate(); err != nil {
		return fmt.Errorf("commitlog: alter topic %q: %w", name, err)
	}
	l.mu.RLock()
	t := l.topics[name]
	var old TopicConfig
	if t != nil {
		old = t.config
	}
	l.mu.RUnlock()
	if t == nil {
		return fmt.Errorf("commitlog: alter topic %q: %w", name, ferry.ErrTopicNotFound)
	}
	return alterable(name, old, c)
}

// alterable checks that a topic's config may go from old to c.
func alterable(name string, old, c TopicConfig) error {
	var fixed []string
	if c.Partitions != old.Partitions {
		fixed = append(fixed, fmt.Sprintf("partitions (%d, asked %d: keys map to partitions by their count)", old.Partitions, c.Partitions))
	}
	if c.Compact != old.Compact {
		fixed = append(fixed, fmt.Sprintf("compaction (%v, asked %v)", old.Compact, c.Compact))
	}
	if c.DedupWindow != old.DedupWindow || c.DedupMaxIDs != old.DedupMaxIDs {
		fixed = append(fixed, fmt.Sprintf("the dedup window (%v and %d IDs, asked %v and %d)", old.DedupWindow, old.DedupMaxIDs, c.DedupWindow, c.DedupMaxIDs))
	}
	if len(fixed) > 0 {
		return fmt.Errorf("commitlog: alter topic %q: %s fixed at creation; only retention changes (create a new topic and replay into it): %w",
			name, strings.Join(fixed, ", "), ferry.ErrInvalidArgument)
	}
	return nil
}

// DeleteOffsets deletes a consumer group's committed offsets: on topic's
// partitions (all of them if none are named), or on every topic if topic
// is empty. A group without offsets left is gone from Groups. Deleting
// what is not there is no error; a named topic that does not exist is
// ferry.ErrTopicNotFound.
func (l *Log) DeleteOffsets(ctx context.Context, group, topic string, partitions ...int32) error {
	if group == "" || len(group) > 255 {
		return fmt.Errorf("commitlog: delete offsets: want a consumer group name of 1 to 255 bytes, got %q: %w", group, ferry.ErrInvalidArgument)
	}
	if topic == "" && len(partitions) > 0 {
		return fmt.Errorf("commitlog: delete offsets of %q: partitions %v of which topic?: %w", group, partitions, ferry.ErrInvalidArgument)
	}
	if len(partitions) == 0 {
		return l.submit(ctx, &request{ctrl: &controlOp{op: opDeleteOffsets, group: group, name: topic, partition: allPartitions}})
	}
	for _, p := range partitions {
		if p < 0 {
			return fmt.Errorf("commitlog: delete offsets of %q on %q: partition %d: %w", group, topic, p, ferry.ErrInvalidArgument)
		}
	}
	for _, p := range partitions {
		if err := l.submit(ctx, &request{ctrl: &controlOp{op: opDeleteOffsets, group: group, name: topic, partition: uint32(p)}}); err != nil {
			return err
		}
	}
	return nil
}

// CommitOffsets records a consumer group's positions durably.
func (l *Log) CommitOffsets(ctx context.Context, group string, offsets ...Offset) error {
	return l.Commit(ctx, &Batch{Group: group, Offsets: offsets})
}

// Sync makes everything acknowledged so far durable. With
// DurabilityAlways it has nothing to do; with the other modes it is a
// durability point on demand.
func (l *Log) Sync(ctx context.Context) error {
	return l.submit(ctx, &request{sync: true})
}
