package dlq

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/retry"
)

// Index follows a dead-letter topic and keeps, per group and source
// partition, each key's unresolved entries (dead or requested) in the order
// they were dead-lettered, plus every original ID the group ever
// dead-lettered. It holds no payloads (an entry's record is fetched by its
// offset when needed), so its memory is a few hundred bytes per entry, and
// it reads each record once: catching up costs what was appended since.
//
// It is what the runtime decides by: a key is parked exactly while its
// partition's index holds an unresolved entry of it, and a message whose
// ID is in the index has its outcome recorded in the DLQ. Both follow from
// the records alone, so a crash or restart anywhere cannot change them.
type Index struct {
	b     backend.Backend
	topic string

	catchMu sync.Mutex // one catch-up at a time

	mu    sync.Mutex
	next  uint64                           // the next DLQ offset to read
	byID  map[string]map[ferry.ID]*Indexed // by group, then original ID
	parts map[PartitionKey]*partIndex
	names map[string]string // interned group, topic and class names

	cacheMu sync.Mutex
	cache   map[uint64]*ferry.Message // records read ahead by Record, by offset
	cached  []uint64                  // their offsets, oldest first
}

// catchUpBatch is how many records CatchUp reads at a time.
const catchUpBatch = 1000

// Read-ahead of Record: a settle job reads one entry, and the entries of
// other keys redriven with it are usually next to it.
const (
	readAhead = 32
	maxCached = 4096
)

// PartitionKey names one group's share of a source partition.
type PartitionKey struct {
	Group     string
	Topic     string
	Partition int32
}

type partIndex struct {
	keys  map[string][]*Indexed // unresolved entries of each key, in record order
	loose []*Indexed            // unresolved entries without a key, in record order
	// changed collects keys whose entries changed since the last Changes;
	// looseChanged, whether an entry without a key did.
	changed      map[string]bool
	looseChanged bool
}

// Indexed is the index's view of one dead letter: where it is and what
// its state is, without its payload.
type Indexed struct {
	Record       uint64 // offset of the dead letter in the DLQ topic
	ID           ferry.ID
	Key          []byte // shared with the key's other entries: read-only
	Offset       uint64 // the original's offset in its partition
	Class        retry.Class
	Attempts     int
	FirstFailure time.Time
	RetryAt      time.Time
	State        string
	stateAt      uint64     // offset of the marker that set State (0: none)
	part         *partIndex // where the index keeps it (nil in a copy from an Entry)
	key          string     // Key, shared by the key's entries in the index
}

// NewIndex returns an empty index of the DLQ topic; CatchUp fills it.
func NewIndex(b backend.Backend, topic string) *Index {
	return &Index{b: b, topic: topic, byID: map[string]map[ferry.ID]*Indexed{}, parts: map[PartitionKey]*partIndex{}, names: map[string]string{},
		cache: map[uint64]*ferry.Message{}}
}

// CatchUp reads the DLQ topic from where the index stopped to its current
// end. When it returns nil, every record appended before it was called is
// applied.
func (x *Index) CatchUp(ctx context.Context) error {
	x.catchMu.Lock()
	defer x.catchMu.Unlock()
	tp := backend.TopicPartition{Topic: x.topic}
	// Every record committed before the call, even behind a transaction
	// still open (another member's exactly-once batch).
	end, err := backend.StableEnd(ctx, x.b, tp)
	if err != nil {
		return fmt.Errorf("dlq: index %q: %w", x.topic, err)
	}
	x.mu.Lock()
	off := x.next
	x.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// read fetches from off to end and hands each result to take.
	read := func(take func(backend.Fetched) error) error {
		for off < end {
			res, err := x.b.Fetch(ctx, tp, off, catchUpBatch)
			if err != nil {
				return fmt.Errorf("dlq: index %q at %d: %w", x.topic, off, err)
			}
			off = max(off, res.Next)
			if err := take(res); err != nil {
				return err
			}
		}
		return nil
	}
	if end-off <= catchUpBatch {
		// The usual case once caught up: a few records, one read.
		return read(x.applyFetched)
	}
	// Reading and decoding the next records overlaps applying the last
	// ones: a first catch-up of a large DLQ costs about the larger of
	// the two rather than their sum.
	fetched := make(chan backend.Fetched, 2)
	failed := make(chan error, 1)
	go func() {
		defer close(fetched)
		failed <- read(func(res backend.Fetched) error {
			select {
			case fetched <- res:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	for res := range fetched {
		if err := x.applyFetched(res); err != nil {
			return err
		}
	}
	return <-failed
}

// applyFetched applies res and moves the index's read position past it.
func (x *Index) applyFetched(res backend.Fetched) error {
	if err := x.apply(res.Messages...); err != nil {
		return err
	}
	x.mu.Lock()
	x.next = max(x.next, res.Next)
	x.mu.Unlock()
	return nil
}

// apply adds records of the DLQ topic (dead letters and state markers),
// in the topic's order. A record applied twice changes nothing more:
// entries are known by group and original ID, and a marker takes effect
// only over older ones.
func (x *Index) apply(records ...*ferry.Message) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, r := range records {
		if r.Topic != "" && r.Topic != x.topic {
			continue
		}
		if s, ok := r.Header(HeaderState); ok {
			x.applyMarkerLocked(r, string(s))
			continue
		}
		x.addLocked(r)
	}
	return nil
}

// intern returns the index's copy of the name b (a group, topic or
// class), allocating only the first time it sees it.
func (x *Index) intern(b []byte) string {
	if v, ok := x.names[string(b)]; ok {
		return v
	}
	s := string(b)
	x.names[s] = s
	return s
}

// deadLetter holds the headers of a dead letter the index keeps, each
// the first of its name (as Message.Header reads them), found in one pass
// over the record's headers.
type deadLetter struct {
	id, group, topic, partition, offset, class, attempts, first, retryAt []byte
}

func readDeadLetter(r *ferry.Message) deadLetter {
	var d deadLetter
	for _, h := range r.Headers {
		var f *[]byte
		switch h.Key {
		case HeaderOriginalID:
			f = &d.id
		case HeaderGroup:
			f = &d.group
		case HeaderTopic:
			f = &d.topic
		case HeaderPartition:
			f = &d.partition
		case HeaderOffset:
			f = &d.offset
		case HeaderClass:
			f = &d.class
		case HeaderAttempts:
			f = &d.attempts
		case HeaderFirstFailure:
			f = &d.first
		case HeaderRetryAt:
			f = &d.retryAt
		default:
			continue
		}
		if *f == nil {
			*f = h.Value[:len(h.Value):len(h.Value)]
			if *f == nil {
				*f = []byte{}
			}
		}
	}
	return d
}

// addLocked indexes the dead letter r. It reads only the headers the
// index keeps (Parse would copy the original message and parse every
// time), and copies the key, so nothing of the fetched record stays
// referenced. A record that is not a dead letter (no original ID: written
// to the topic by something else) is not an entry: it is skipped, as
// Queue skips it, so that it can stop neither the owner of a partition
// nor an operator.
func (x *Index) addLocked(r *ferry.Message) {
	d := readDeadLetter(r)
	u, err := uuid.ParseBytes(d.id)
	if err != nil {
		return
	}
	id := ferry.ID(u)
	group := x.intern(d.group)
	ids := x.byID[group]
	if ids == nil {
		ids = map[ferry.ID]*Indexed{}
		x.byID[group] = ids
	}
	if _, ok := ids[id]; ok {
		return
	}
	part, _ := strconv.Atoi(string(d.partition))
	pk := PartitionKey{group, x.intern(d.topic), int32(part)}
	p := x.partLocked(pk)
	ix := &Indexed{Record: r.Offset, ID: id, Class: retry.Class(x.intern(d.class)), State: StateDead, part: p}
	ix.Offset, _ = strconv.ParseUint(string(d.offset), 10, 64)
	if ix.Class == ClassScheduled {
		// Only a scheduled retry needs its count and times: it continues
		// them when it comes due.
		ix.Attempts, _ = strconv.Atoi(string(d.attempts))
		ix.FirstFailure, _ = time.Parse(time.RFC3339Nano, string(d.first))
		ix.RetryAt, _ = time.Parse(time.RFC3339Nano, string(d.retryAt))
	}
	ids[id] = ix
	if r.Key == nil {
		// No order to keep: nothing parks behind it.
		p.loose = insertByRecord(p.loose, ix)
		p.looseChanged = true
		return
	}
	// The entries of a key share one copy of it (the map's key, and
	// Key's bytes), made for the first.
	es := p.keys[string(r.Key)]
	if len(es) > 0 {
		ix.key, ix.Key = es[0].key, es[0].Key
	} else {
		ix.key = string(r.Key)
		ix.Key = []byte(ix.key)
	}
	p.keys[ix.key] = insertByRecord(es, ix)
	p.changed[ix.key] = true
	return
}

func insertByRecord(es []*Indexed, ix *Indexed) []*Indexed {
	i, _ := slices.BinarySearchFunc(es, ix.Record, func(a *Indexed, r uint64) int { return cmpU64(a.Record, r) })
	return slices.Insert(es, i, ix)
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (x *Index) partLocked(pk PartitionKey) *partIndex {
	p := x.parts[pk]
	if p == nil {
		p = &partIndex{keys: map[string][]*Indexed{}, changed: map[string]bool{}}
		x.parts[pk] = p
	}
	return p
}

// applyMarkerLocked sets the state of the entry (or entries, for a marker
// of an older format without a group) a marker names.
func (x *Index) applyMarkerLocked(r *ferry.Message, state string) {
	id, err := ferry.ParseID(headerString(r, HeaderOriginalID))
	if err != nil {
		return
	}
	var targets []*Indexed
	if g, ok := r.Header(HeaderGroup); ok {
		if ix := x.byID[string(g)][id]; ix != nil {
			targets = append(targets, ix)
		}
	} else {
		for _, ids := range x.byID {
			if ix := ids[id]; ix != nil {
				targets = append(targets, ix)
			}
		}
	}
	for _, ix := range targets {
		if r.Offset <= ix.stateAt && ix.stateAt != 0 {
			continue // an older marker read after a newer one
		}
		if !unresolved(ix.State) {
			// Redriven and purged are final: an owner that was handling
			// the entry when an operator purged it writes its outcome
			// after the purge, and the purge stands.
			continue
		}
		ix.stateAt = r.Offset
		was := ix.State
		ix.State = state
		if _, ok := r.Header(HeaderClass); ok && state == StateDead {
			// The entry failed again: its marker says how.
			if c, ok := r.Header(HeaderClass); ok {
				ix.Class = retry.Class(x.intern(c))
			}
			if a, err := strconv.Atoi(headerString(r, HeaderAttempts)); err == nil {
				ix.Attempts = a
			}
			ix.FirstFailure, _ = time.Parse(time.RFC3339Nano, headerString(r, HeaderFirstFailure))
			ix.RetryAt, _ = time.Parse(time.RFC3339Nano, headerString(r, HeaderRetryAt))
		}
		p := ix.part
		drop := unresolved(was) && !unresolved(state)
		if ix.Key == nil {
			p.looseChanged = true
			if drop {
				p.loose = slices.DeleteFunc(p.loose, func(e *Indexed) bool { return e == ix })
			}
			continue
		}
		k := ix.key
		p.changed[k] = true
		if drop {
			p.keys[k] = slices.DeleteFunc(p.keys[k], func(e *Indexed) bool { return e == ix })
			if len(p.keys[k]) == 0 {
				delete(p.keys, k)
			}
		}
	}
}

func unresolved(state string) bool { return state == StateDead || state == StateRequested }

// Known reports whether group dead-lettered the message id: its outcome
// is recorded in the DLQ, whatever the entry's state now.
func (x *Index) Known(group string, id ferry.ID) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	_, ok := x.byID[group][id]
	return ok
}

// Unresolved returns copies of key's unresolved entries in partition pk,
// in dead-letter order (nil if the key is not parked). A nil key asks for
// the entries without a key.
func (x *Index) Unresolved(pk PartitionKey, key []byte) []Indexed {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	if p == nil {
		return nil
	}
	es := p.loose
	if key != nil {
		es = p.keys[string(key)]
	}
	out := make([]Indexed, len(es))
	for i, e := range es {
		out[i] = *e
	}
	return out
}

// Parked returns how many keys of pk have unresolved entries, and how many
// entries they hold.
func (x *Index) Parked(pk PartitionKey) (keys, entries int) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	if p == nil {
		return 0, 0
	}
	for _, es := range p.keys {
		entries += len(es)
	}
	return len(p.keys), entries
}

// Keys returns the keys of pk that have unresolved entries, in the order
// of their first ones (so that settling them reads the DLQ forward).
func (x *Index) Keys(pk PartitionKey) [][]byte {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	if p == nil {
		return nil
	}
	out := make([][]byte, 0, len(p.keys))
	for k := range p.keys {
		out = append(out, []byte(k))
	}
	p.sortLocked(out)
	return out
}

// sortLocked orders keys by their first unresolved entry (keys without
// one first).
func (p *partIndex) sortLocked(keys [][]byte) {
	head := func(k []byte) uint64 {
		if es := p.keys[string(k)]; len(es) > 0 {
			return es[0].Record
		}
		return 0
	}
	slices.SortFunc(keys, func(a, b []byte) int { return cmpU64(head(a), head(b)) })
}

// Changes returns the keys of pk whose entries changed since the last call
// (a new entry, a marker), ordered as Keys orders them, and whether an entry without a key did, and
// forgets them.
func (x *Index) Changes(pk PartitionKey) (keys [][]byte, loose bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	if p == nil {
		return nil, false
	}
	for k := range p.changed {
		keys = append(keys, []byte(k))
	}
	p.sortLocked(keys)
	clear(p.changed)
	loose, p.looseChanged = p.looseChanged, false
	return keys, loose
}

// Record fetches the dead letter of e from the DLQ topic and parses it.
// It reads ahead, and the records read ahead serve the next calls.
func (x *Index) Record(ctx context.Context, e Indexed) (Entry, error) {
	r, err := x.record(ctx, e.Record)
	if err != nil {
		return Entry{}, err
	}
	ent, err := Parse(r)
	if err != nil {
		return Entry{}, err
	}
	if ent.Original.ID != e.ID {
		return Entry{}, fmt.Errorf("dlq: entry at %d of %q is %s, want %s: %w", e.Record, x.topic, ent.Original.ID, e.ID, ferry.ErrCorrupt)
	}
	ent.State = e.State
	return ent, nil
}

func (x *Index) record(ctx context.Context, off uint64) (*ferry.Message, error) {
	x.cacheMu.Lock()
	r := x.cache[off]
	delete(x.cache, off) // an entry is handled once
	x.cacheMu.Unlock()
	if r != nil {
		return r, nil
	}
	res, err := x.b.Fetch(ctx, backend.TopicPartition{Topic: x.topic}, off, readAhead)
	if err != nil {
		return nil, fmt.Errorf("dlq: read entry at %d of %q: %w", off, x.topic, err)
	}
	x.cacheMu.Lock()
	defer x.cacheMu.Unlock()
	for _, m := range res.Messages {
		switch {
		case m.Offset == off:
			r = m
		case m.Offset > off:
			if _, marker := m.Header(HeaderState); !marker {
				x.cache[m.Offset] = m
				x.cached = append(x.cached, m.Offset)
			}
		}
	}
	for len(x.cached) > maxCached {
		delete(x.cache, x.cached[0])
		x.cached = x.cached[1:]
	}
	if r == nil {
		return nil, fmt.Errorf("dlq: entry at %d of %q is gone (retention?): %w", off, x.topic, ErrNotFound)
	}
	return r, nil
}

// Has reports whether key has unresolved entries in pk: whether it is
// parked.
func (x *Index) Has(pk PartitionKey, key []byte) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	return p != nil && len(p.keys[string(key)]) > 0
}

// HasAtOrBefore reports whether key has an unresolved entry in pk of a
// message at or before offset in its partition: whether a message of key
// at offset is parked behind an earlier dead letter. Entries of later
// messages only do not park it: a key's messages run in order in one lane,
// so a message older than every unresolved entry of its key was finished
// before they were written (it is replayed from the uncommitted window
// after a rebalance or restart), and parking it would put a copy of it
// behind newer messages of its key.
func (x *Index) HasAtOrBefore(pk PartitionKey, key []byte, offset uint64) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	if p == nil {
		return false
	}
	for _, e := range p.keys[string(key)] {
		if e.Offset <= offset {
			return true
		}
	}
	return false
}

// Head returns key's first unresolved entry in pk (a nil key: the first
// without a key), if there is one.
func (x *Index) Head(pk PartitionKey, key []byte) (Indexed, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	p := x.parts[pk]
	if p == nil {
		return Indexed{}, false
	}
	es := p.loose
	if key != nil {
		es = p.keys[string(key)]
	}
	if len(es) == 0 {
		return Indexed{}, false
	}
	return *es[0], true
}
