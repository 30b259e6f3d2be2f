package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// session is one member of a Kafka consumer group: a franz-go group
// transact session whose client fetches nothing itself (its topics are
// paused; the runtime reads through Fetch), reports its partitions to the
// runtime, and produces the member's transactions.
type session struct {
	b      *Backend
	group  string
	member string
	txn    *kgo.GroupTransactSession
	cl     *kgo.Client
	assign chan []backend.TopicPartition
	// offsets queues Commit and PublishAndCommit calls for offsetLoop,
	// the one writer of the member's offsets (Kafka runs one transaction
	// at a time per producer, so calls waiting together share the next).
	offsets chan *offsetReq
	quit    chan struct{} // closed by Leave; offsetLoop ends
	// loopDone is closed when offsetLoop returned: no transaction of the
	// member runs any more.
	loopDone chan struct{}
	// inTxn is set while offsetLoop runs a transaction.
	inTxn atomic.Bool

	mu       sync.Mutex
	owned    map[backend.TopicPartition]bool // commits allowed
	revoking map[backend.TopicPartition]bool // told to let go, not released yet
	// revokeSig is closed (and replaced) when a revocation marked its
	// partitions revoking: a plain commit waiting for offsetLoop then
	// looks again whether it must go out at once (see queue).
	revokeSig chan struct{}
	released  chan backend.TopicPartition
	// sent is the last assignment put in assign; known holds the
	// partitions of assignments the runtime took and has not released
	// since: the ones it may be running, whose revocation waits for their
	// release (see deliverLocked).
	sent      []backend.TopicPartition
	credited  bool // sent's partitions were added to known (it was taken)
	known     map[backend.TopicPartition]bool
	leaving   bool
	leaveDone chan struct{} // closed when Leave returned
	gone      bool
	lease     time.Time // when the last heartbeat the coordinator took was sent, plus the span (see leaseLoop)
	// landed is the furthest offset of each partition this session
	// committed: no later write of the session sends one below it.
	landed map[backend.TopicPartition]int64

	plainMu sync.Mutex // one commitPlain at a time
}

// Join implements backend.Backend.
func (b *Backend) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	if group == "" || member == "" || len(topics) == 0 {
		return nil, fmt.Errorf("kafka: join needs a group, a member and topics: %w", ferry.ErrInvalidArgument)
	}
	for _, t := range topics {
		if _, err := b.Partitions(ctx, t); err != nil {
			return nil, err
		}
	}
	s := &session{b: b, group: group, member: member, assign: make(chan []backend.TopicPartition, 1),
		offsets: make(chan *offsetReq), quit: make(chan struct{}), loopDone: make(chan struct{}),
		owned: map[backend.TopicPartition]bool{}, revoking: map[backend.TopicPartition]bool{}, revokeSig: make(chan struct{}), known: map[backend.TopicPartition]bool{}, leaveDone: make(chan struct{}), landed: map[backend.TopicPartition]int64{}, released: make(chan backend.TopicPartition, 1024)}
	txn, err := kgo.NewGroupTransactSession(append([]kgo.Opt{
		kgo.SeedBrokers(b.seeds...),
		kgo.ClientID(member),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.TransactionalID(b.cfg.txnPrefix + "." + group + "." + member),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.SessionTimeout(b.cfg.sessionTimeout),
		kgo.HeartbeatInterval(max(b.cfg.sessionTimeout/10, 100*time.Millisecond)),
		kgo.OnPartitionsAssigned(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
	}, b.cfg.extra...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: join %s as %s: %w", group, member, err)
	}
	cl := txn.Client()
	cl.PauseFetchTopics(topics...)
	s.txn, s.cl = txn, cl
	// Initializing the producer ID now fences the member's previous
	// incarnation: a transaction it left open (killed mid-way) is aborted
	// at once, instead of holding the group's offsets until it times out.
	// It runs on its own clock: a caller that gives up meanwhile gets a
	// session it then leaves, rather than a client closed half-joined.
	pctx, pcancel := context.WithTimeout(context.Background(), txnTimeout)
	_, _, err = cl.ProducerID(pctx)
	pcancel()
	if err != nil {
		// The group client never polled: leaving it waits for a group
		// loop that never ran, unless the leave is told not to wait.
		gone, cancel := context.WithCancel(context.Background())
		cancel()
		cl.LeaveGroupContext(gone)
		cl.Close()
		return nil, fmt.Errorf("kafka: join %s as %s: transactional producer: %w", group, member, err)
	}
	go s.offsetLoop()
	go s.leaseLoop()
	// The group client joins on its first poll; the poll returns nothing
	// (every topic is paused) and the rest runs in the background.
	go s.pollLoop()
	return s, nil
}

// pollLoop keeps the client's consumer alive; fetching is paused, so it
// only drives group management.
func (s *session) pollLoop() {
	for {
		fs := s.cl.PollFetches(context.Background())
		if fs.IsClientClosed() {
			return
		}
	}
}

func flatten(m map[string][]int32) []backend.TopicPartition {
	var out []backend.TopicPartition
	for t, ps := range m {
		for _, p := range ps {
			out = append(out, backend.TopicPartition{Topic: t, Partition: p})
		}
	}
	return out
}

// deliverLocked tells the runtime its partitions: owned ones not being
// revoked. Only the latest assignment is kept: one the runtime did not
// take is replaced, and a partition only it named was never seen by the
// runtime, so nothing waits for its release.
func (s *session) deliverLocked() {
	if s.gone {
		return
	}
	var mine []backend.TopicPartition
	for tp := range s.owned {
		if !s.revoking[tp] {
			mine = append(mine, tp)
		}
	}
	backend.SortPartitions(mine)
	select {
	case <-s.assign: // not taken: the runtime knows no more than before
	default:
		s.creditTakenLocked()
	}
	s.sent, s.credited = mine, false
	s.assign <- mine
}

// creditTakenLocked adds the partitions of the last assignment to known
// if the runtime took it (and they were not added before: a partition
// released since must not come back).
func (s *session) creditTakenLocked() {
	if s.credited || len(s.assign) > 0 {
		return
	}
	for _, tp := range s.sent {
		s.known[tp] = true
	}
	s.credited = true
}

func (s *session) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tp := range flatten(assigned) {
		s.owned[tp] = true
		delete(s.revoking, tp)
	}
	s.deliverLocked()
}

// onRevoked runs inside the rebalance: the runtime is told to let the
// partitions go, and the rebalance waits until it released each one
// (after draining and committing), so the next owner starts where it
// stopped.
func (s *session) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	tps := flatten(revoked)
	s.mu.Lock()
	if s.leaving {
		for _, tp := range tps {
			delete(s.owned, tp)
		}
		s.mu.Unlock()
		return
	}
	for _, tp := range tps {
		if s.owned[tp] {
			s.revoking[tp] = true
		}
	}
	close(s.revokeSig)
	s.revokeSig = make(chan struct{})
	s.deliverLocked()
	// The wait is for the partitions the runtime may be running: not one
	// it never saw, nor one it released already (a consumer stopping
	// lets each partition go as its worker stops). Waiting for those
	// would hold franz-go's lock, and every transaction of the member,
	// until Leave.
	waiting := map[backend.TopicPartition]bool{}
	for _, tp := range tps {
		if s.revoking[tp] && s.known[tp] {
			waiting[tp] = true
		}
	}
	s.mu.Unlock()
	// No deadline of its own: franz-go heartbeats while this waits, and
	// the broker moves the partitions only after the member rejoined
	// without them or the rebalance timeout removed it. Giving up sooner
	// would hand a partition on while its worker still runs. Leave ends
	// the wait (franz-go cannot leave the group while this runs, and the
	// runtime leaves only after its workers stopped).
	for len(waiting) > 0 {
		select {
		case tp := <-s.released:
			delete(waiting, tp)
		case <-ctx.Done():
			waiting = nil
		case <-s.quit:
			waiting = nil
		}
	}
	s.mu.Lock()
	for _, tp := range tps {
		delete(s.owned, tp)
		delete(s.revoking, tp)
		delete(s.known, tp)
	}
	s.mu.Unlock()
	s.rearm()
}

// rearm has offsetLoop run an empty transaction once the revocation or
// loss callback that called it has returned. franz-go's transact session
// wraps those callbacks: the first sets a flag that makes the wrapper
// skip every later callback until a transaction ends (its End clears
// it), so without this a member that ran no transaction since would
// never hear of its next revocation, and go on handling a partition the
// group has given to another member. The empty transaction sends nothing.
func (s *session) rearm() {
	go func() {
		select {
		case s.offsets <- &offsetReq{rearm: true, done: make(chan error, 1)}:
		case <-s.quit:
		}
	}()
}

func (s *session) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tp := range flatten(lost) {
		delete(s.owned, tp)
		delete(s.revoking, tp)
		delete(s.known, tp)
	}
	s.deliverLocked()
	s.rearm()
}

func (s *session) Group() string                                { return s.group }
func (s *session) Member() string                               { return s.member }
func (s *session) Assignments() <-chan []backend.TopicPartition { return s.assign }

// Release implements backend.Session. The partition stays the member's
// until a revocation takes it, which then does not wait for it.
func (s *session) Release(tp backend.TopicPartition) {
	s.mu.Lock()
	revoking := s.revoking[tp]
	s.creditTakenLocked() // taken before it was released
	delete(s.known, tp)
	s.mu.Unlock()
	if revoking {
		select {
		case s.released <- tp:
		default:
		}
	}
}

// Heartbeat implements backend.Session; franz-go heartbeats on its own.
func (s *session) Heartbeat() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return fmt.Errorf("kafka: member %q of group %q: %w", s.member, s.group, backend.ErrSessionExpired)
	}
	return nil
}

// Lease implements backend.Session. franz-go heartbeats on its own and
// does not say when a heartbeat succeeded, so the session sends its own
// (leaseLoop): the broker removes a member that sent none for the session
// timeout, counted from when it received the last, which is no sooner
// than it was sent.
func (s *session) Lease() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return time.Time{}
	}
	return s.lease
}

// leaseLoop heartbeats the member's current generation every quarter of
// the session timeout and renews the lease when the coordinator answered
// without error. REBALANCE_IN_PROGRESS does not renew it: the broker
// removes a member that has not rejoined by the rebalance's deadline
// whatever its heartbeats, so during a rebalance longer than the session
// timeout (a revoked partition whose handler is slow to stop) the
// member's other partitions start no handlers until it rejoined. Any
// other answer (the member unknown, its generation stale) leaves the
// lease to run out; onLost follows. The lease is the send time of the
// last heartbeat answered without error plus the shorter of the session
// and rebalance timeouts: a rebalance that began after that answer ends
// no sooner than its start plus the rebalance timeout, and with no
// rebalance the session timeout is the bound.
func (s *session) leaseLoop() {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-s.quit; cancel() }()
	every := max(s.b.cfg.sessionTimeout/4, 25*time.Millisecond)
	span := s.b.cfg.sessionTimeout
	if rt, ok := s.cl.OptValue(kgo.RebalanceTimeout).(time.Duration); ok && rt > 0 {
		span = min(span, rt)
	}
	for {
		wait := min(every, 20*time.Millisecond) // until the member has joined and a heartbeat was taken
		if member, gen := s.cl.GroupMetadata(); member != "" && gen >= 0 {
			req := kmsg.NewPtrHeartbeatRequest()
			req.Group, req.Generation, req.MemberID = s.group, gen, member
			sent := time.Now()
			rctx, rcancel := context.WithTimeout(ctx, every)
			resp, err := req.RequestWith(rctx, s.cl)
			rcancel()
			if err == nil && resp.ErrorCode == 0 {
				s.mu.Lock()
				if sent.Add(span).After(s.lease) {
					s.lease = sent.Add(span)
				}
				s.mu.Unlock()
				wait = every
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Leave implements backend.Session: the member leaves the group at once.
func (s *session) Leave() {
	s.mu.Lock()
	if s.leaving {
		s.mu.Unlock()
		<-s.leaveDone // a Leave of another goroutine's
		return
	}
	s.leaving = true
	s.mu.Unlock()
	defer close(s.leaveDone)
	close(s.quit)
	// A transaction still running (its caller gave up waiting) ends
	// first: closing the client under it would leave it open on the
	// brokers until their timeout, holding back the last stable offset of
	// every partition it wrote, and with it every other member's start.
	// The wait is bounded (a transaction cannot end while a revocation
	// holds franz-go's lock, for one), and a plain commit is not waited
	// for: it may wait for a rebalance only leaving ends.
	if s.inTxn.Load() {
		select {
		case <-s.loopDone:
		case <-time.After(leaveTxnWait):
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.cl.LeaveGroupContext(ctx)
	s.cl.Close()
	s.mu.Lock()
	s.gone = true
	s.owned = map[backend.TopicPartition]bool{}
	close(s.assign)
	s.mu.Unlock()
}

// Commit implements backend.Backend. Commit each partition on its own, as
// the runtime does: a commit that names a partition not being revoked
// waits for the member's transaction in progress, which cannot end while
// a revocation waits for a partition's release (a commit waiting so for
// a partition that starts being revoked goes out at once: see queue).
//
// A member's commits and transactions
// are written in turn by one goroutine (offsetLoop), so the group's
// committed offset never goes back within a session. The exception is a
// partition being revoked: franz-go holds every transaction of the member
// from landing while the revocation runs (they abort), so the offsets of
// such partitions go out at once rather than behind a transaction that is
// waiting for their worker to stop.
func (b *Backend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	sess, ok := s.(*session)
	if !ok || sess.b != b {
		return fmt.Errorf("kafka: session from another backend: %w", ferry.ErrInvalidArgument)
	}
	if _, err := sess.ownedOffsets(offsets); err != nil {
		return err
	}
	if len(offsets) == 0 {
		return nil
	}
	var now, queued []backend.Offset
	sess.mu.Lock()
	for _, o := range offsets {
		if sess.revoking[o.TopicPartition] {
			now = append(now, o)
		} else {
			queued = append(queued, o)
		}
	}
	sess.mu.Unlock()
	var errNow, errQueued error
	if len(now) > 0 {
		errNow = sess.commitPlain(ctx, now)
	}
	if len(queued) > 0 {
		errQueued = sess.queue(ctx, &offsetReq{ctx: ctx, plain: true, offsets: queued, done: make(chan error, 1)})
	}
	return errors.Join(errNow, errQueued)
}

// commitPlain commits offsets with an OffsetCommit request (outside any
// transaction), bound to the caller's ctx: a commit its caller gave up on
// is not sent later. Offsets the session committed already, or passed,
// are left out, and a partition the member no longer owns fails it.
func (s *session) commitPlain(ctx context.Context, offsets []backend.Offset) error {
	// One plain commit at a time, from the check against landed to
	// raising it: otherwise a commit that checked earlier could be sent
	// later (franz-go sends in the order its commit lock is taken).
	s.plainMu.Lock()
	defer s.plainMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	marks, err := s.ownedOffsets(offsets)
	if err != nil {
		return err
	}
	s.mu.Lock()
	for topic, parts := range marks {
		for p, eo := range parts {
			if cur, ok := s.landed[backend.TopicPartition{Topic: topic, Partition: p}]; ok && cur >= eo.Offset {
				delete(parts, p)
			}
		}
		if len(parts) == 0 {
			delete(marks, topic)
		}
	}
	s.mu.Unlock()
	if len(marks) == 0 {
		return nil
	}
	var cerr error
	s.cl.CommitOffsetsSync(ctx, marks, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerr.ErrorForCode(p.ErrorCode); e != nil && cerr == nil {
					cerr = e
				}
			}
		}
	})
	switch {
	case cerr == nil:
		s.raiseLanded(marks)
		return nil
	case errors.Is(cerr, kerr.IllegalGeneration), errors.Is(cerr, kerr.UnknownMemberID),
		errors.Is(cerr, kerr.RebalanceInProgress), errors.Is(cerr, kerr.FencedInstanceID):
		return fmt.Errorf("kafka: commit by %s: %v: %w", s.member, cerr, backend.ErrFenced)
	default:
		return fmt.Errorf("kafka: commit by %s: %w", s.member, cerr)
	}
}

// raiseLanded records that marks were committed.
func (s *session) raiseLanded(marks map[string]map[int32]kgo.EpochOffset) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, parts := range marks {
		for p, eo := range parts {
			tp := backend.TopicPartition{Topic: topic, Partition: p}
			s.landed[tp] = max(s.landed[tp], eo.Offset)
		}
	}
}

// txnTimeout bounds one transaction: ending it is not cancelable (a
// canceled EndTxn leaves its outcome unknown), so it runs on its own
// clock rather than the caller's context.
const txnTimeout = 30 * time.Second

// PublishAndCommit implements backend.Transactional with a Kafka
// transaction: msgs and offsets commit together or not at all. The
// transaction aborts, and PublishAndCommit returns an error wrapping
// backend.ErrFenced, if the group rebalanced while it ran or the member's
// generation is stale. Transactions of one member run one at a time;
// calls made while one runs share the next. An offset older than one the
// member committed before is raised to it (the runtime's batch carries
// the watermark of when it was made; a newer plain commit may have landed
// since). If ctx ends first, PublishAndCommit returns ctx's error while
// the transaction finishes in the background; its outcome is then unknown
// to the caller (a new owner of the partition waits for it: see
// Committed).
func (b *Backend) PublishAndCommit(ctx context.Context, s backend.Session, msgs []*ferry.Message, offsets ...backend.Offset) error {
	if s == nil && len(offsets) == 0 {
		return b.publishAtomically(ctx, msgs)
	}
	sess, ok := s.(*session)
	if !ok || sess.b != b {
		return fmt.Errorf("kafka: session from another backend: %w", ferry.ErrInvalidArgument)
	}
	marks, err := sess.ownedOffsets(offsets)
	if err != nil {
		return err
	}
	recs, err := b.records(ctx, msgs)
	if err != nil {
		return err
	}
	if len(recs) == 0 && len(marks) == 0 {
		return nil
	}
	return sess.queue(ctx, &offsetReq{msgs: msgs, recs: recs, offsets: offsets, done: make(chan error, 1)})
}

// queue hands r to offsetLoop and waits for its outcome or ctx. If ctx
// ends before offsetLoop took r, nothing was sent; after, the outcome is
// unknown to the caller (offsetLoop goes on with it).
//
// A plain commit one of whose partitions starts being revoked meanwhile
// is sent at once instead, like the commit of a partition that was
// revoking already. Waiting on would deadlock: the revocation callback
// holds franz-go's transact-session lock until the partition is released,
// offsetLoop's next End waits for that lock, and the partition's worker
// (perhaps this very caller, or a consumer stopping its partitions
// together) waits for this commit before it releases the partition. If
// offsetLoop took the request already, it runs it later as well: by then
// landed covers it, or the partition is no longer the member's.
func (s *session) queue(ctx context.Context, r *offsetReq) error {
	taken := false
	for {
		s.mu.Lock()
		sig, revoking := s.revokeSig, false
		for _, o := range r.offsets {
			revoking = revoking || (r.plain && s.revoking[o.TopicPartition])
		}
		s.mu.Unlock()
		if revoking {
			return s.commitPlain(ctx, r.offsets)
		}
		if !r.plain {
			sig = nil // a transaction aborts anyway: it waits for its outcome
		}
		if !taken {
			select {
			case s.offsets <- r:
				taken = true
			case <-sig:
			case <-s.quit:
				return fmt.Errorf("kafka: member %s left: %w", s.member, ferry.ErrClosed)
			case <-ctx.Done():
				return ctx.Err()
			}
			continue
		}
		select {
		case err := <-r.done:
			return err
		case <-sig:
		case <-ctx.Done():
			return fmt.Errorf("kafka: offsets of %s: outcome unknown: %w", s.member, ctx.Err())
		}
	}
}

// offsetReq is one Commit or PublishAndCommit call waiting for its turn.
type offsetReq struct {
	ctx     context.Context // a plain commit's caller: not sent once it ended
	plain   bool            // Commit: offsets only, outside a transaction
	rearm   bool            // an empty transaction (see rearm)
	msgs    []*ferry.Message
	recs    []*kgo.Record
	offsets []backend.Offset
	done    chan error
}

// maxTxnCalls bounds how many PublishAndCommit calls share a transaction.
const maxTxnCalls = 256

// offsetLoop writes the member's offsets: it runs the commits and
// transactions queued to it one after the other, in the order they came,
// each finished (landed or failed) before the next starts, and none
// sends an offset below one the session committed before (a plain commit
// leaves it out, a transaction raises it), so no order in which the
// runtime's calls arrive moves the group back. Transactions queued
// together share one: with many lanes emitting at once, its round trips
// are paid once for all of them; a failed transaction fails every call
// in it.
func (s *session) offsetLoop() {
	defer close(s.loopDone)
	for {
		var batch []*offsetReq
		select {
		case r := <-s.offsets:
			batch = append(batch, r)
		case <-s.quit:
			return
		}
	more:
		for len(batch) < maxTxnCalls {
			select {
			case r := <-s.offsets:
				batch = append(batch, r)
			default:
				break more
			}
		}
		for len(batch) > 0 {
			if r := batch[0]; r.rearm {
				batch = batch[1:]
				r.done <- s.emptyTransaction()
				continue
			}
			if r := batch[0]; r.plain {
				batch = batch[1:]
				r.done <- s.commitPlain(r.ctx, r.offsets)
				continue
			}
			n := 1
			for n < len(batch) && !batch[n].plain && !batch[n].rearm {
				n++
			}
			txn := batch[:n]
			batch = batch[n:]
			var msgs []*ferry.Message
			var recs []*kgo.Record
			var offsets []backend.Offset
			for _, r := range txn {
				msgs, recs, offsets = append(msgs, r.msgs...), append(recs, r.recs...), append(offsets, r.offsets...)
			}
			err := s.transact(msgs, recs, offsets)
			for _, r := range txn {
				r.done <- err
			}
		}
	}
}

// publishAtomically writes msgs in a producer-only transaction (a DLQ
// redrive's message and its marker, say). The producer's transactional ID
// is unique to this backend: a process that dies inside one of these
// transactions leaves it to the brokers' transaction timeout.
func (b *Backend) publishAtomically(ctx context.Context, msgs []*ferry.Message) error {
	recs, err := b.records(ctx, msgs)
	if err != nil || len(recs) == 0 {
		return err
	}
	b.txnMu.Lock()
	defer b.txnMu.Unlock()
	if b.txnProd == nil {
		cl, err := kgo.NewClient(append([]kgo.Opt{
			kgo.SeedBrokers(b.seeds...),
			kgo.TransactionalID(b.cfg.txnPrefix + ".producer." + ferry.NewID().String()),
			kgo.RecordPartitioner(kgo.ManualPartitioner()),
			kgo.RequiredAcks(kgo.AllISRAcks()),
		}, b.cfg.extra...)...)
		if err != nil {
			return fmt.Errorf("kafka: transactional producer: %w", err)
		}
		b.txnProd = cl
	}
	if err := b.txnProd.BeginTransaction(); err != nil {
		return fmt.Errorf("kafka: begin transaction: %w", err)
	}
	perr := produce(ctx, b.txnProd.Produce, msgs, recs)
	// Ending is not cancelable (its outcome would be unknown): it runs on
	// its own clock.
	ectx, cancel := context.WithTimeout(context.Background(), txnTimeout)
	defer cancel()
	if perr != nil {
		if err := b.txnProd.AbortBufferedRecords(ectx); err != nil {
			perr = errors.Join(perr, err)
		}
	}
	if err := b.txnProd.EndTransaction(ectx, kgo.TransactionEndTry(perr == nil)); err != nil {
		return errors.Join(perr, fmt.Errorf("kafka: end transaction: %w", err))
	}
	return perr
}

// ownedOffsets checks that the member owns every partition of offsets and
// returns them in franz-go's form, the furthest of each partition's.
func (s *session) ownedOffsets(offsets []backend.Offset) (map[string]map[int32]kgo.EpochOffset, error) {
	out := map[string]map[int32]kgo.EpochOffset{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range offsets {
		if s.gone || !s.owned[o.TopicPartition] {
			return nil, fmt.Errorf("kafka: commit %s/%d by %s: %w", o.Topic, o.Partition, s.member, backend.ErrFenced)
		}
		if out[o.Topic] == nil {
			out[o.Topic] = map[int32]kgo.EpochOffset{}
		}
		if cur, ok := out[o.Topic][o.Partition]; !ok || cur.Offset < int64(o.Offset) {
			out[o.Topic][o.Partition] = kgo.EpochOffset{Epoch: -1, Offset: int64(o.Offset)}
		}
	}
	return out, nil
}

// leaveTxnWait bounds how long Leave waits for a running transaction.
const leaveTxnWait = 10 * time.Second

// emptyTransaction begins and aborts a transaction with nothing in it.
func (s *session) emptyTransaction() error {
	s.inTxn.Store(true)
	defer s.inTxn.Store(false)
	if err := s.txn.Begin(); err != nil {
		return fmt.Errorf("kafka: begin transaction of %s: %w", s.member, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), txnTimeout)
	defer cancel()
	if _, err := s.txn.End(ctx, kgo.TryAbort); err != nil {
		return fmt.Errorf("kafka: end empty transaction of %s: %w", s.member, err)
	}
	return nil
}

// transact runs one transaction: begin, produce, mark the offsets, end.
func (s *session) transact(msgs []*ferry.Message, recs []*kgo.Record, offsets []backend.Offset) error {
	s.inTxn.Store(true)
	defer s.inTxn.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), txnTimeout)
	defer cancel()
	if err := s.txn.Begin(); err != nil {
		return fmt.Errorf("kafka: begin transaction of %s: %w", s.member, err)
	}
	if err := produce(ctx, s.txn.Produce, msgs, recs); err != nil {
		if _, aerr := s.txn.End(ctx, kgo.TryAbort); aerr != nil {
			err = errors.Join(err, fmt.Errorf("abort: %w", aerr))
		}
		return fmt.Errorf("kafka: transaction of %s: %w", s.member, err)
	}
	if f := s.b.afterTxnProduce; f != nil {
		f()
	}
	// The session commits the offsets it polled; this client polls
	// nothing, so the runtime's offsets are put into the transaction's
	// offset commit (sent with the member's generation, which the
	// coordinator checks) through franz-go's hook for that request. They
	// are decided as it is sent: a partition the member no longer owns
	// aborts the transaction (a call queued before its partition was
	// revoked), and each offset is the furthest of the calls' and of what
	// the session committed before (a call's offset is the watermark of
	// when the runtime made it).
	var marks map[string]map[int32]kgo.EpochOffset
	ctx = kgo.PreTxnCommitFnContext(ctx, func(req *kmsg.TxnOffsetCommitRequest) error {
		var err error
		if marks, err = s.ownedOffsets(offsets); err != nil {
			return err
		}
		s.mu.Lock()
		for topic, parts := range marks {
			for p, eo := range parts {
				if cur := s.landed[backend.TopicPartition{Topic: topic, Partition: p}]; cur > eo.Offset {
					parts[p] = kgo.EpochOffset{Epoch: eo.Epoch, Offset: cur}
				}
			}
		}
		s.mu.Unlock()
		for topic, parts := range marks {
			rt := kmsg.NewTxnOffsetCommitRequestTopic()
			rt.Topic = topic
			for p, eo := range parts {
				rp := kmsg.NewTxnOffsetCommitRequestTopicPartition()
				rp.Partition, rp.Offset, rp.LeaderEpoch, rp.Metadata = p, eo.Offset, eo.Epoch, &req.MemberID
				rt.Partitions = append(rt.Partitions, rp)
			}
			req.Topics = append(req.Topics, rt)
		}
		return nil
	})
	committed, err := s.txn.End(ctx, kgo.TryCommit)
	switch {
	case err != nil:
		return fmt.Errorf("kafka: end transaction of %s: %w", s.member, err)
	case !committed:
		return fmt.Errorf("kafka: transaction of %s aborted: the group rebalanced or the generation is stale: %w", s.member, backend.ErrFenced)
	}
	s.raiseLanded(marks)
	return nil
}
