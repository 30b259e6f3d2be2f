package dlq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/retry"
)

// Entry states. An entry is dead when written; a redrive back to its
// source topic makes it requested, and the consumer that owns its source
// partition then handles it from the DLQ: redriven when handled, dead
// again (with how it failed) when it fails again. A redrive to another
// topic (a move) makes it redriven at once; a purge, purged.
const (
	StateDead      = "dead"
	StateRequested = "requested"
	StateRedriven  = "redriven"
	StatePurged    = "purged"
)

// Queue operates one dead-letter topic.
type Queue struct {
	b     backend.Backend
	topic string
}

// Open returns the queue kept in topic (for a consumer group G, "G.dlq" by
// default).
func Open(b backend.Backend, topic string) *Queue { return &Queue{b: b, topic: topic} }

// Filter selects entries. Zero fields match everything.
type Filter struct {
	Class       retry.Class // failure class
	Key         []byte      // the original message's key
	SourceTopic string      // the topic the message came from
	Since       time.Time   // last failure at or after
	Until       time.Time   // last failure before
	IDs         []ferry.ID  // original message IDs
	// State selects entries in one state. List returns the unresolved
	// entries (dead and requested) unless State names a resolved one
	// (redriven, purged).
	State string
}

// Match reports whether e passes the filter.
func (f Filter) Match(e Entry) bool {
	switch {
	case f.Class != "" && e.Class != f.Class:
		return false
	case f.Key != nil && !bytes.Equal(f.Key, e.Original.Key):
		return false
	case f.SourceTopic != "" && e.Original.Topic != f.SourceTopic:
		return false
	case f.State != "" && e.State != f.State:
		return false
	case !f.Since.IsZero() && e.LastFailure.Before(f.Since):
		return false
	case !f.Until.IsZero() && !e.LastFailure.Before(f.Until):
		return false
	}
	if len(f.IDs) == 0 {
		return true
	}
	for _, id := range f.IDs {
		if id == e.Original.ID {
			return true
		}
	}
	return false
}

// groupID names one group's entry of an original message.
type groupID struct {
	group string
	id    ferry.ID
}

// scan reads the whole topic and returns its entries in order, each with
// its current state (its latest marker's).
func (q *Queue) scan(ctx context.Context) ([]Entry, error) {
	n, err := q.b.Partitions(ctx, q.topic)
	if err != nil {
		return nil, fmt.Errorf("dlq: %q: %w", q.topic, err)
	}
	var entries []Entry
	latest := map[groupID]*ferry.Message{} // the newest marker of each entry
	var legacy []*ferry.Message            // markers without a group, in order
	for p := 0; p < n; p++ {
		tp := backend.TopicPartition{Topic: q.topic, Partition: int32(p)}
		start, end, err := q.b.Bounds(ctx, tp)
		if err != nil {
			return nil, err
		}
		for off := start; off < end; {
			res, err := q.b.Fetch(ctx, tp, off, 1000)
			if err != nil {
				return nil, fmt.Errorf("dlq: read %q at %d: %w", q.topic, off, err)
			}
			for _, r := range res.Messages {
				if _, ok := r.Header(HeaderState); ok {
					id, err := ferry.ParseID(headerString(r, HeaderOriginalID))
					if err != nil {
						continue
					}
					if g, ok := r.Header(HeaderGroup); ok {
						gid := groupID{string(g), id}
						if cur := latest[gid]; cur == nil || unresolved(headerString(cur, HeaderState)) {
							latest[gid] = r // redriven and purged are final (see Index)
						}
					} else {
						legacy = append(legacy, r)
					}
					continue
				}
				e, err := Parse(r)
				if err != nil {
					continue // not a dead letter: not an entry (see Index.addLocked)
				}
				entries = append(entries, e)
			}
			off = res.Next
		}
	}
	for _, r := range legacy {
		id, _ := ferry.ParseID(headerString(r, HeaderOriginalID))
		for _, e := range entries {
			if gid := (groupID{e.Group, id}); e.Original.ID == id && (latest[gid] == nil || latest[gid].Offset < r.Offset && unresolved(headerString(latest[gid], HeaderState))) {
				latest[gid] = r
			}
		}
	}
	for i := range entries {
		e := &entries[i]
		r := latest[groupID{e.Group, e.Original.ID}]
		if r == nil {
			continue
		}
		e.State, e.stateAt = headerString(r, HeaderState), r.Offset
		if _, ok := r.Header(HeaderClass); ok && e.State == StateDead {
			// It failed again: the marker says how.
			e.Class, e.Error, e.Reason = retry.Class(headerString(r, HeaderClass)), headerString(r, HeaderError), headerString(r, HeaderReason)
			e.Attempts, _ = strconv.Atoi(headerString(r, HeaderAttempts))
			e.LastFailure, _ = time.Parse(time.RFC3339Nano, headerString(r, HeaderLastFailure))
			e.RetryAt, _ = time.Parse(time.RFC3339Nano, headerString(r, HeaderRetryAt))
		}
	}
	return entries, nil
}

func headerString(m *ferry.Message, k string) string {
	v, _ := m.Header(k)
	return string(v)
}

// List returns the unresolved entries (dead, or requested and not handled
// yet) that match f, in the order they were dead-lettered; with f.State
// StateRedriven or StatePurged, the entries resolved that way instead.
func (q *Queue) List(ctx context.Context, f Filter) ([]Entry, error) {
	all, err := q.scan(ctx)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range all {
		if (unresolved(e.State) || f.State != "" && !unresolved(f.State)) && f.Match(e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// ErrNotFound: no entry for that message ID.
var ErrNotFound = errors.New("dlq: no entry for that message")

// Get returns the entry of the original message id, whatever its state.
func (q *Queue) Get(ctx context.Context, id ferry.ID) (Entry, error) {
	all, err := q.scan(ctx)
	if err != nil {
		return Entry{}, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].Original.ID == id {
			return all[i], nil
		}
	}
	return Entry{}, fmt.Errorf("%w %s in %q", ErrNotFound, id, q.topic)
}

// RedriveOpts configure a redrive.
type RedriveOpts struct {
	Filter Filter
	// To moves every selected entry to this topic (a copy with an ID
	// derived from the entry, and the entry marked redriven) instead of
	// requesting that its source partition's owner handle it.
	To string
	// IncludeRequested makes a move (To set) take entries already
	// requested too. Their owner may be handling them at that moment, and
	// then they would be handled twice: set it only when the owner does
	// not run. Without it a move leaves every key that has a requested
	// entry as it is (keys move whole).
	IncludeRequested bool
	// PerSecond limits how many entries a second are requested or moved
	// (0: unlimited). How fast the owner handles requested entries is the
	// consumer's own pace (its rate limit, WithRateLimit).
	PerSecond float64
	// Progress, if set, is called after each entry with how many of how
	// many are done.
	Progress func(done, total int)
}

// Redrive brings the dead entries matching the filter back into
// processing and returns how many it took. Keys move whole: when an entry
// is selected, every dead entry of its key (the same group, source
// partition and key) goes with it, in order.
//
// Back to the source topic (To empty), Redrive does not publish anything
// to it: it writes a request marker per entry, and the consumer that owns
// the entry's source partition handles the key's entries straight from
// the DLQ, in their original order, before any later message of the key —
// at once if it runs, when it starts otherwise. Only that owner brings a
// partition's dead letters back, so overlapping redrives, restarts and
// messages published meanwhile cannot duplicate or reorder a key. Entries
// requested already are left as they are; a rerun requests nothing twice.
//
// With To set, each entry is moved: re-published to To with an ID derived
// from the entry (a rerun is deduplicated), a ferry-redrive-of header
// naming the original, and marked redriven, atomically where the backend
// can. A key with an entry requested already stays for its owner, unless
// IncludeRequested.
func (q *Queue) Redrive(ctx context.Context, o RedriveOpts) (int, error) {
	if o.PerSecond < 0 {
		return 0, fmt.Errorf("dlq: redrive rate %v: want 0 (unlimited) or more: %w", o.PerSecond, ferry.ErrInvalidArgument)
	}
	entries, err := q.wholeKeys(ctx, o.Filter)
	if err != nil {
		return 0, err
	}
	switch {
	case o.To == "":
		entries = slices.DeleteFunc(entries, func(e Entry) bool { return e.State != StateDead })
	case !o.IncludeRequested:
		busy := map[entryKey]bool{}
		for _, e := range entries {
			if e.State == StateRequested {
				busy[keyOfEntry(e)] = true
			}
		}
		entries = slices.DeleteFunc(entries, func(e Entry) bool {
			return e.State == StateRequested || e.Original.Key != nil && busy[keyOfEntry(e)]
		})
	}
	var lim *rate.Limiter
	if o.PerSecond > 0 {
		lim = rate.NewLimiter(rate.Limit(o.PerSecond), 1)
	}
	if o.To == "" {
		// Requests go in batches (each one atomic on the embedded log),
		// one entry at a time when rate-limited.
		chunk := 256
		if lim != nil {
			chunk = 1
		}
		for i := 0; i < len(entries); i += chunk {
			part := entries[i:min(i+chunk, len(entries))]
			if lim != nil {
				if err := lim.Wait(ctx); err != nil {
					return i, err
				}
			}
			markers := make([]*ferry.Message, len(part))
			for j, e := range part {
				markers[j] = Marker(q.topic, e.Group, e.Indexed(), StateRequested, nil)
			}
			if err := q.b.Publish(ctx, markers...); err != nil {
				return i, fmt.Errorf("dlq: request redrive of %s: %w", part[0].Original.ID, err)
			}
			if o.Progress != nil {
				for j := range part {
					o.Progress(i+j+1, len(entries))
				}
			}
		}
		return len(entries), nil
	}
	for i, e := range entries {
		if lim != nil {
			if err := lim.Wait(ctx); err != nil {
				return i, err
			}
		}
		out := &ferry.Message{ID: ferry.DeriveID("redrive", q.topic, e.Record.ID), Topic: o.To, Key: e.Original.Key, Payload: e.Original.Payload,
			Headers: RedriveHeaders(e.Original)}
		if err := q.publishWithMarker(ctx, out, Marker(q.topic, e.Group, e.Indexed(), StateRedriven, nil)); err != nil {
			return i, fmt.Errorf("dlq: move %s to %q: %w", e.Original.ID, o.To, err)
		}
		if o.Progress != nil {
			o.Progress(i+1, len(entries))
		}
	}
	return len(entries), nil
}

// RedriveHeaders returns the headers of orig as redelivered from the DLQ:
// orig's own, with one ferry-redrive-of naming orig. An original that
// carries the header already (a copy moved before) has it replaced, not
// repeated.
func RedriveHeaders(orig *ferry.Message) []ferry.Header {
	hs := make([]ferry.Header, 0, len(orig.Headers)+1)
	for _, h := range orig.Headers {
		if h.Key != HeaderRedriveOf {
			hs = append(hs, h)
		}
	}
	return append(hs, ferry.Header{Key: HeaderRedriveOf, Value: []byte(orig.ID.String())})
}

// entryKey is an entry's key: one group's, in one source partition.
type entryKey struct {
	group, topic string
	partition    int32
	key          string
}

func keyOfEntry(e Entry) entryKey {
	return entryKey{e.Group, e.Original.Topic, e.Original.Partition, string(e.Original.Key)}
}

// wholeKeys lists the unresolved entries matching f plus every unresolved
// entry that shares a key with one of them, in dead-letter order. A key is
// one group's, in one source partition: two groups sharing a DLQ topic
// park their keys apart, and each releases its own.
func (q *Queue) wholeKeys(ctx context.Context, f Filter) ([]Entry, error) {
	all, err := q.List(ctx, Filter{})
	if err != nil {
		return nil, err
	}
	id := keyOfEntry
	keys := map[entryKey]bool{}
	chosen := map[int]bool{}
	for i, e := range all {
		if f.Match(e) {
			chosen[i] = true
			if e.Original.Key != nil {
				keys[id(e)] = true
			}
		}
	}
	var out []Entry
	for i, e := range all {
		if chosen[i] || (e.Original.Key != nil && keys[id(e)]) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Purge marks the unresolved entries matching f purged (they no longer
// list or redrive, and a key parked behind them moves on) and returns how
// many.
func (q *Queue) Purge(ctx context.Context, f Filter) (int, error) {
	entries, err := q.List(ctx, f)
	if err != nil {
		return 0, err
	}
	// Redriven and purged are final: a filter of those states purges
	// nothing.
	entries = slices.DeleteFunc(entries, func(e Entry) bool { return !unresolved(e.State) })
	for i, e := range entries {
		if err := q.b.Publish(ctx, Marker(q.topic, e.Group, e.Indexed(), StatePurged, nil)); err != nil {
			return i, fmt.Errorf("dlq: purge %s: %w", e.Original.ID, err)
		}
	}
	return len(entries), nil
}

// Indexed returns the index's view of e.
func (e Entry) Indexed() Indexed {
	return Indexed{Record: e.Record.Offset, ID: e.Original.ID, Key: e.Original.Key, Offset: e.Original.Offset, Class: e.Class,
		Attempts: e.Attempts, FirstFailure: e.FirstFailure, RetryAt: e.RetryAt, State: e.State, stateAt: e.stateAt}
}

// Marker returns the record that moves group's entry e of dlqTopic to
// state. A marker of state dead (the entry failed again) carries f, how.
// Its ID is derived from the entry and the marker it follows, so writing
// the same transition twice is deduplicated, while the entry can go
// through the same state again later (requested, dead, requested).
func Marker(dlqTopic, group string, e Indexed, state string, f *Failure) *ferry.Message {
	hs := []ferry.Header{
		{Key: HeaderOriginalID, Value: []byte(e.ID.String())},
		{Key: HeaderGroup, Value: []byte(group)},
		{Key: HeaderState, Value: []byte(state)},
	}
	if f != nil {
		hs = append(hs, failureHeaders(*f)...)
	}
	return &ferry.Message{ID: ferry.DeriveID(state, dlqTopic+"\x00"+group+"\x00"+strconv.FormatUint(e.stateAt, 10), e.ID), Topic: dlqTopic,
		Key: e.Key, Payload: []byte{}, Headers: hs}
}

// publishWithMarker writes msg and its entry's marker atomically when the
// backend can; otherwise msg first, so a crash in between leaves the entry
// unresolved and a rerun re-publishes msg with the same ID (deduplicated
// within the log's window).
func (q *Queue) publishWithMarker(ctx context.Context, msg, marker *ferry.Message) error {
	if tx, ok := q.b.(backend.Transactional); ok {
		return tx.PublishAndCommit(ctx, nil, []*ferry.Message{msg, marker})
	}
	if err := q.b.Publish(ctx, msg); err != nil {
		return err
	}
	return q.b.Publish(ctx, marker)
}
