package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// Keys in the groups bucket:
//
//	<group>.m.<member>          a member's heartbeat; value: memberValue
//	<group>.o.<topic>.<p>       a partition's owner and committed offset; value: ownerValue
//
// (all names encoded). Every write is a compare-and-set on the revision
// the writer saw, so a member acts only on the state it knows.

type memberValue struct {
	Partitions []backend.TopicPartition `json:"partitions"`
	Session    string                   `json:"session"` // tells this session's writes from another's
	Beat       uint64                   `json:"beat"`
}

type ownerValue struct {
	Owner     string `json:"owner,omitempty"` // "" = free
	Offset    uint64 `json:"offset"`
	Committed bool   `json:"committed"`
}

func (b *Backend) memberKey(group, member string) string {
	return encode(group) + ".m." + encode(member)
}

func (b *Backend) ownerKey(group string, tp backend.TopicPartition) string {
	return fmt.Sprintf("%s.o.%s.%d", encode(group), encode(tp.Topic), tp.Partition)
}

// Committed implements backend.Backend.
func (b *Backend) Committed(ctx context.Context, group string, tp backend.TopicPartition) (uint64, bool, error) {
	e, err := b.groups.Get(ctx, b.ownerKey(group, tp))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("jetstream: committed offset of %s on %s/%d: %w", group, tp.Topic, tp.Partition, err)
	}
	var v ownerValue
	if err := json.Unmarshal(e.Value(), &v); err != nil {
		return 0, false, fmt.Errorf("jetstream: owner key %s: %v: %w", e.Key(), err, ferry.ErrCorrupt)
	}
	return v.Offset, v.Committed, nil
}

// Commit implements backend.Backend: a compare-and-set on each
// partition's owner key, refused with backend.ErrFenced when the session
// no longer owns it.
func (b *Backend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	sess, ok := s.(*session)
	if !ok || sess.b != b {
		return fmt.Errorf("jetstream: session from another backend: %w", ferry.ErrInvalidArgument)
	}
	for _, o := range offsets {
		if err := sess.commit(ctx, o); err != nil {
			return err
		}
	}
	return nil
}

// Join implements backend.Backend.
func (b *Backend) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	if group == "" || member == "" || len(topics) == 0 {
		return nil, fmt.Errorf("jetstream: join needs a group, a member and topics: %w", ferry.ErrInvalidArgument)
	}
	var tps []backend.TopicPartition
	for _, t := range topics {
		n, err := b.Partitions(ctx, t)
		if err != nil {
			return nil, err
		}
		for p := range n {
			tps = append(tps, backend.TopicPartition{Topic: t, Partition: int32(p)})
		}
	}
	nonce := ferry.NewID().String()
	mine, _ := json.Marshal(memberValue{Partitions: tps, Session: nonce})
	key := b.memberKey(group, member)
	sent := time.Now()
	rev, err := b.groups.Create(ctx, key, mine)
	if errors.Is(err, jetstream.ErrKeyExists) {
		rev, sent, err = b.rejoin(ctx, key, mine)
		if isConflict(err) {
			return nil, fmt.Errorf("jetstream: member %q is alive in group %q (its heartbeat goes on): %w", member, group, ferry.ErrInvalidArgument)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("jetstream: join %s as %s: %w", group, member, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	w, err := b.groups.Watch(wctx, encode(group)+".>")
	if err != nil {
		cancel()
		b.groups.Delete(ctx, key, jetstream.LastRevision(rev))
		return nil, fmt.Errorf("jetstream: watch group %s: %w", group, err)
	}
	s := &session{
		b: b, group: group, member: member, key: key, tps: tps, myRev: rev, nonce: nonce,
		assign: make(chan []backend.TopicPartition, 1), members: map[string]*memberView{}, owners: map[backend.TopicPartition]*ownerView{},
		released: map[backend.TopicPartition]bool{}, wake: make(chan struct{}, 1), stop: cancel, done: make(chan struct{}),
		lease: sent.Add(b.cfg.sessionTimeout),
	}
	go s.run(wctx, w)
	return s, nil
}

// rejoin takes over the key of a member with this name that is gone
// without leaving (killed, say): if the key's revision does not change
// for a session timeout, it is replaced. A live member keeps
// heartbeating, and the takeover fails with a conflict. It returns when
// the write that took the key over was sent.
func (b *Backend) rejoin(ctx context.Context, key string, value []byte) (uint64, time.Time, error) {
	e, err := b.groups.Get(ctx, key)
	if err != nil {
		return 0, time.Time{}, err
	}
	select {
	case <-ctx.Done():
		return 0, time.Time{}, ctx.Err()
	case <-time.After(b.cfg.sessionTimeout + b.cfg.sessionTimeout/4):
	}
	sent := time.Now()
	rev, err := b.groups.Update(ctx, key, value, e.Revision())
	return rev, sent, err
}

type memberView struct {
	rev    uint64
	seenAt time.Time // local time the revision was first seen
	tps    []backend.TopicPartition
}

type ownerView struct {
	rev uint64
	v   ownerValue
}

// session is one member's view of its group, kept current by a KV watch,
// and the loop that heartbeats, expires silent members, acquires its
// partitions and frees released ones.
type session struct {
	b      *Backend
	group  string
	member string
	key    string
	nonce  string
	tps    []backend.TopicPartition
	assign chan []backend.TopicPartition
	wake   chan struct{}
	stop   context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	myRev     uint64
	members   map[string]*memberView // by member key
	owners    map[backend.TopicPartition]*ownerView
	released  map[backend.TopicPartition]bool // released by the runtime, to be freed
	delivered []backend.TopicPartition
	known     map[backend.TopicPartition]bool // taken by the runtime in an assignment, until released
	healthy   time.Time                       // since when heartbeats succeed without a break
	lease     time.Time                       // when the last successful heartbeat was sent, plus the session timeout
	gone      bool
	err       error
}

func (s *session) Group() string                                { return s.group }
func (s *session) Member() string                               { return s.member }
func (s *session) Assignments() <-chan []backend.TopicPartition { return s.assign }

// Release implements backend.Session: the partition's owner key is freed
// (keeping the committed offset) for its next owner.
func (s *session) Release(tp backend.TopicPartition) {
	s.mu.Lock()
	s.released[tp] = true
	delete(s.known, tp)
	s.mu.Unlock()
	s.poke()
}

// Heartbeat implements backend.Session. The session's loop also
// heartbeats on its own; this reports whether the session still lives.
func (s *session) Heartbeat() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return fmt.Errorf("jetstream: member %q of group %q: %w", s.member, s.group, errors.Join(backend.ErrSessionExpired, s.err))
	}
	return nil
}

// Lease implements backend.Session. Other members remove this one once
// they have seen no new revision of its key for the session timeout, on
// their own clocks; a revision is seen no sooner than it was sent, so the
// partitions stay this member's until the last successful heartbeat's
// send time plus the timeout (given clocks that run at the same rate).
func (s *session) Lease() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone || s.myRev == 0 {
		return time.Time{}
	}
	return s.lease
}

// Leave implements backend.Session: owned partitions are freed and the
// member key deleted, so others take over at once.
func (s *session) Leave() {
	s.mu.Lock()
	if s.gone {
		s.mu.Unlock()
		return
	}
	var owned []backend.TopicPartition
	for tp, o := range s.owners {
		if o.v.Owner == s.member {
			owned = append(owned, tp)
		}
	}
	rev := s.myRev
	s.mu.Unlock()
	s.stop()
	<-s.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tp := range owned {
		s.free(ctx, tp)
	}
	s.b.groups.Delete(ctx, s.key, jetstream.LastRevision(rev))
	s.expire(nil)
}

func (s *session) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// expire ends the session: no more assignments, commits fenced.
func (s *session) expire(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.gone {
		s.gone, s.err = true, err
		close(s.assign)
	}
}

func (s *session) run(ctx context.Context, w jetstream.KeyWatcher) {
	defer close(s.done)
	defer w.Stop()
	beat := max(s.b.cfg.sessionTimeout/4, 10*time.Millisecond)
	s.mu.Lock()
	s.healthy = time.Now()
	s.mu.Unlock()
	t := time.NewTicker(beat)
	defer t.Stop()
	lastBeat := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				s.expire(errors.New("group watch ended"))
				return
			}
			if e != nil {
				s.observe(e)
				// Drain what else arrived before acting.
				continue
			}
			// The end of the initial values: the view is complete, so act
			// now rather than at the next tick (a quarter of the session
			// timeout, which every member waited for its first
			// assignment).
		case <-s.wake:
		case <-t.C:
		}
		if time.Since(lastBeat) >= beat {
			if err := s.heartbeat(ctx); err != nil {
				if ctx.Err() == nil && errors.Is(err, backend.ErrSessionExpired) {
					s.expire(err)
					return
				}
				// Cut off from the server: others' silence proves nothing
				// until this member hears them again for a full timeout.
				s.mu.Lock()
				s.healthy = time.Time{}
				s.mu.Unlock()
				continue
			} else {
				lastBeat = time.Now()
			}
		}
		s.step(ctx)
	}
}

// observe applies a watched change to the view (ignoring revisions older
// than what the session already knows from its own writes).
func (s *session) observe(e jetstream.KeyValueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key := e.Key()
	deleted := e.Operation() != jetstream.KeyValuePut
	prefix := encode(s.group)
	switch {
	case len(key) > len(prefix)+3 && key[len(prefix):len(prefix)+3] == ".m.":
		if deleted {
			delete(s.members, key)
			if key == s.key {
				s.myRev = 0 // someone expired us
			}
			return
		}
		var v memberValue
		if json.Unmarshal(e.Value(), &v) != nil {
			return
		}
		if m := s.members[key]; m == nil || m.rev < e.Revision() {
			s.members[key] = &memberView{rev: e.Revision(), seenAt: time.Now(), tps: v.Partitions}
		}
	case len(key) > len(prefix)+3 && key[len(prefix):len(prefix)+3] == ".o.":
		tp, ok := s.partitionOf(key)
		if !ok {
			return
		}
		if deleted {
			delete(s.owners, tp)
			return
		}
		var v ownerValue
		if json.Unmarshal(e.Value(), &v) != nil {
			return
		}
		if o := s.owners[tp]; o == nil || o.rev < e.Revision() {
			s.owners[tp] = &ownerView{rev: e.Revision(), v: v}
		}
	}
}

// partitionOf parses an owner key, <group>.o.<topic>.<p>.
func (s *session) partitionOf(key string) (backend.TopicPartition, bool) {
	rest := key[len(encode(s.group))+3:]
	dot := strings.LastIndexByte(rest, '.')
	if dot < 0 {
		return backend.TopicPartition{}, false
	}
	topic, ok := decode(rest[:dot])
	p, err := strconv.Atoi(rest[dot+1:])
	if !ok || err != nil {
		return backend.TopicPartition{}, false
	}
	return backend.TopicPartition{Topic: topic, Partition: int32(p)}, true
}

func (s *session) heartbeat(ctx context.Context) error {
	s.mu.Lock()
	rev := s.myRev
	m := s.members[s.key]
	beat := uint64(0)
	if m != nil {
		beat = m.rev
	}
	s.mu.Unlock()
	if rev == 0 {
		return backend.ErrSessionExpired
	}
	v, _ := json.Marshal(memberValue{Partitions: s.tps, Session: s.nonce, Beat: beat + 1})
	sent := time.Now()
	nrev, err := s.b.groups.Update(ctx, s.key, v, rev)
	if isConflict(err) {
		// Either the group removed this member, or an earlier heartbeat
		// landed while its reply was lost (a server restart): the
		// session's nonce in the key tells which.
		e, gerr := s.b.groups.Get(ctx, s.key)
		if gerr != nil && !errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return gerr
		}
		var cur memberValue
		if gerr != nil || json.Unmarshal(e.Value(), &cur) != nil || cur.Session != s.nonce {
			return fmt.Errorf("%w: heartbeat key was removed by the group", backend.ErrSessionExpired)
		}
		nrev, err = s.b.groups.Update(ctx, s.key, v, e.Revision())
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.myRev = nrev
	s.lease = sent.Add(s.b.cfg.sessionTimeout)
	s.members[s.key] = &memberView{rev: nrev, seenAt: time.Now(), tps: s.tps}
	if s.healthy.IsZero() {
		s.healthy = time.Now()
	}
	s.mu.Unlock()
	return nil
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// step expires silent members, frees released partitions, acquires the
// partitions the assignment gives this member and delivers its set.
func (s *session) step(ctx context.Context) {
	s.mu.Lock()
	timeout := s.b.cfg.sessionTimeout
	var silent []string
	var silentRevs []uint64
	wants := map[string][]backend.TopicPartition{}
	for key, m := range s.members {
		if key != s.key && !s.healthy.IsZero() && time.Since(m.seenAt) > timeout && time.Since(s.healthy) > timeout {
			silent = append(silent, key)
			silentRevs = append(silentRevs, m.rev)
			continue
		}
		wants[key] = m.tps
	}
	wants[s.key] = s.tps
	desired := backend.Assign(wants)
	var toFree, toTake []backend.TopicPartition
	for tp := range s.released {
		delete(s.released, tp)
		if o := s.owners[tp]; o != nil && o.v.Owner == s.member && desired[tp] != s.key {
			toFree = append(toFree, tp)
		}
	}
	live := func(owner string) bool {
		_, ok := wants[s.b.memberKey(s.group, owner)]
		return ok
	}
	for tp, who := range desired {
		if who != s.key {
			continue
		}
		o := s.owners[tp]
		if o == nil || o.v.Owner == "" || o.v.Owner != s.member && !live(o.v.Owner) {
			toTake = append(toTake, tp)
		}
	}
	s.mu.Unlock()

	for i, key := range silent {
		s.b.groups.Delete(ctx, key, jetstream.LastRevision(silentRevs[i]))
	}
	for _, tp := range toFree {
		s.free(ctx, tp)
	}
	for _, tp := range toTake {
		s.take(ctx, tp)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return
	}
	var mine []backend.TopicPartition
	for tp, o := range s.owners {
		// Owned and still meant for this member; a partition meant for
		// another is left out, which tells the runtime to drain, commit
		// and Release it.
		if o.v.Owner == s.member && desired[tp] == s.key {
			mine = append(mine, tp)
		}
	}
	backend.SortPartitions(mine)
	if !equal(mine, s.delivered) {
		select {
		case <-s.assign: // not taken: the runtime knows no more than before
		default:
			if s.known == nil {
				s.known = map[backend.TopicPartition]bool{}
			}
			for _, tp := range s.delivered { // taken
				s.known[tp] = true
			}
		}
		s.delivered = mine
		s.assign <- mine
		// A partition owned here, granted only in the assignment just
		// replaced, was never seen by the runtime, which will never
		// release it: free it for its desired owner.
		in := make(map[backend.TopicPartition]bool, len(mine))
		for _, tp := range mine {
			in[tp] = true
		}
		orphaned := false
		for tp, o := range s.owners {
			if o.v.Owner == s.member && !in[tp] && !s.known[tp] {
				s.released[tp] = true
				orphaned = true
			}
		}
		if orphaned {
			s.poke()
		}
	}
}

func equal(a, b []backend.TopicPartition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// take makes this member the owner of tp, keeping its committed offset.
func (s *session) take(ctx context.Context, tp backend.TopicPartition) {
	s.cas(ctx, tp, func(v *ownerValue) bool { v.Owner = s.member; return true })
}

// free gives up tp, keeping its committed offset.
func (s *session) free(ctx context.Context, tp backend.TopicPartition) {
	s.cas(ctx, tp, func(v *ownerValue) bool {
		if v.Owner != s.member {
			return false
		}
		v.Owner = ""
		return true
	})
}

func (s *session) commit(ctx context.Context, o backend.Offset) error {
	fenced := fmt.Errorf("jetstream: commit %s/%d by %s: %w", o.Topic, o.Partition, s.member, backend.ErrFenced)
	if s.Heartbeat() != nil {
		return fenced
	}
	owned := false
	err := s.cas(ctx, o.TopicPartition, func(v *ownerValue) bool {
		if owned = v.Owner == s.member; !owned {
			return false
		}
		v.Offset, v.Committed = o.Offset, true
		return true
	})
	if err != nil {
		return fmt.Errorf("jetstream: commit %s/%d: %w", o.Topic, o.Partition, err)
	}
	if !owned {
		return fenced
	}
	return nil
}

// cas applies change to tp's owner value with compare-and-set, rereading
// and retrying on a conflict. change returns false to write nothing.
func (s *session) cas(ctx context.Context, tp backend.TopicPartition, change func(*ownerValue) bool) error {
	key := s.b.ownerKey(s.group, tp)
	for range 5 {
		s.mu.Lock()
		cur := s.owners[tp]
		s.mu.Unlock()
		var v ownerValue
		var rev uint64
		if cur != nil {
			v, rev = cur.v, cur.rev
		}
		if !change(&v) {
			return nil
		}
		data, _ := json.Marshal(v)
		var nrev uint64
		var err error
		if rev == 0 {
			nrev, err = s.b.groups.Create(ctx, key, data)
		} else {
			nrev, err = s.b.groups.Update(ctx, key, data, rev)
		}
		if err == nil {
			s.mu.Lock()
			if o := s.owners[tp]; o == nil || o.rev < nrev {
				s.owners[tp] = &ownerView{rev: nrev, v: v}
			}
			s.mu.Unlock()
			return nil
		}
		if !isConflict(err) {
			return err
		}
		// Someone wrote first: reread and decide again.
		e, gerr := s.b.groups.Get(ctx, key)
		s.mu.Lock()
		switch {
		case gerr == nil:
			var nv ownerValue
			if json.Unmarshal(e.Value(), &nv) == nil {
				s.owners[tp] = &ownerView{rev: e.Revision(), v: nv}
			}
		case errors.Is(gerr, jetstream.ErrKeyNotFound):
			delete(s.owners, tp)
		}
		s.mu.Unlock()
		if gerr != nil && !errors.Is(gerr, jetstream.ErrKeyNotFound) {
			return gerr
		}
	}
	return fmt.Errorf("jetstream: owner key %s keeps changing", key)
}
