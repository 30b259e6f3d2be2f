package dlq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/retry"
)

// Entry states.
const (
	StateDead     = "dead"
	StateRedriven = "redriven"
	StatePurged   = "purged"
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

// scan reads the whole topic and returns its entries in order, each with
// its current state.
func (q *Queue) scan(ctx context.Context) ([]Entry, error) {
	n, err := q.b.Partitions(ctx, q.topic)
	if err != nil {
		return nil, fmt.Errorf("dlq: %q: %w", q.topic, err)
	}
	var entries []Entry
	state := map[ferry.ID]string{}
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
				if s, ok := r.Header(HeaderState); ok {
					if id, err := ferry.ParseID(headerString(r, HeaderOriginalID)); err == nil {
						state[id] = string(s)
					}
					continue
				}
				e, err := Parse(r)
				if err != nil {
					return nil, err
				}
				entries = append(entries, e)
			}
			off = res.Next
		}
	}
	for i := range entries {
		if s, ok := state[entries[i].Original.ID]; ok {
			entries[i].State = s
		}
	}
	return entries, nil
}

func headerString(m *ferry.Message, k string) string {
	v, _ := m.Header(k)
	return string(v)
}

// List returns the dead entries (not redriven, not purged) that match f, in
// the order they were dead-lettered.
func (q *Queue) List(ctx context.Context, f Filter) ([]Entry, error) {
	all, err := q.scan(ctx)
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, e := range all {
		if e.State == StateDead && f.Match(e) {
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
	// To sends every entry to this topic instead of its source topic.
	To string
	// PerSecond limits the redrive rate (0: unlimited).
	PerSecond float64
	// Progress, if set, is called after each entry with how many of how
	// many are done.
	Progress func(done, total int)
}

// Redrive re-publishes the dead entries matching the filter, in the order
// they were dead-lettered, and marks them redriven. It returns how many it
// redrove. Keys move whole: when an entry is selected, every dead entry of
// its key goes with it, in order, so the consumer sees the key's messages
// in their original order (and the parked ones are released behind their
// blocker). Each republished message keeps the original key, payload and
// headers, gets an ID derived from the entry (so a repeated redrive is
// deduplicated) and a ferry-redrive-of header naming the original.
func (q *Queue) Redrive(ctx context.Context, o RedriveOpts) (int, error) {
	entries, err := q.wholeKeys(ctx, o.Filter)
	if err != nil {
		return 0, err
	}
	if o.PerSecond < 0 {
		return 0, fmt.Errorf("dlq: redrive rate %v: %w", o.PerSecond, ferry.ErrInvalidArgument)
	}
	var lim *rate.Limiter
	if o.PerSecond > 0 {
		lim = rate.NewLimiter(rate.Limit(o.PerSecond), 1)
	}
	for i, e := range entries {
		if lim != nil {
			if err := lim.Wait(ctx); err != nil {
				return i, err
			}
		}
		to := o.To
		if to == "" {
			to = e.Original.Topic
		}
		out := &ferry.Message{ID: ferry.DeriveID("redrive", q.topic, e.Record.ID), Topic: to, Key: e.Original.Key, Payload: e.Original.Payload,
			Headers: redriveHeaders(e.Original)}
		if o.To == "" {
			// Back to the partition it came from, whatever its key hashes
			// to: that is where its key is parked (a message published to
			// a chosen partition would otherwise come back elsewhere and
			// leave the key parked for good).
			out.Partition, out.PinPartition = e.Original.Partition, true
		}
		if err := q.publishWithMarker(ctx, out, q.marker(e, StateRedriven)); err != nil {
			return i, fmt.Errorf("dlq: redrive %s to %q: %w", e.Original.ID, to, err)
		}
		if o.Progress != nil {
			o.Progress(i+1, len(entries))
		}
	}
	return len(entries), nil
}

// redriveHeaders returns the headers of orig's redriven copy: orig's own,
// with one ferry-redrive-of naming orig. An original that was itself a
// redriven copy (it failed again) carries the header already: it is
// replaced, not repeated, or the new copy would name the first original
// and never match its own blocker.
func redriveHeaders(orig *ferry.Message) []ferry.Header {
	hs := make([]ferry.Header, 0, len(orig.Headers)+1)
	for _, h := range orig.Headers {
		if h.Key != HeaderRedriveOf {
			hs = append(hs, h)
		}
	}
	return append(hs, ferry.Header{Key: HeaderRedriveOf, Value: []byte(orig.ID.String())})
}

// wholeKeys lists the dead entries matching f plus every dead entry that
// shares a key with one of them, in dead-letter order. A key is one
// group's, in one source partition: two groups sharing a DLQ topic park
// their keys apart, and each releases its own.
func (q *Queue) wholeKeys(ctx context.Context, f Filter) ([]Entry, error) {
	all, err := q.List(ctx, Filter{})
	if err != nil {
		return nil, err
	}
	type keyOf struct {
		group, topic string
		partition    int32
		key          string
	}
	id := func(e Entry) keyOf {
		return keyOf{e.Group, e.Original.Topic, e.Original.Partition, string(e.Original.Key)}
	}
	keys := map[keyOf]bool{}
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

// Purge marks the dead entries matching f purged (they no longer list or
// redrive) and returns how many.
func (q *Queue) Purge(ctx context.Context, f Filter) (int, error) {
	entries, err := q.List(ctx, f)
	if err != nil {
		return 0, err
	}
	for i, e := range entries {
		if err := q.b.Publish(ctx, q.marker(e, StatePurged)); err != nil {
			return i, fmt.Errorf("dlq: purge %s: %w", e.Original.ID, err)
		}
	}
	return len(entries), nil
}

func (q *Queue) marker(e Entry, state string) *ferry.Message {
	return &ferry.Message{ID: ferry.DeriveID(state, q.topic, e.Record.ID), Topic: q.topic, Key: e.Record.Key, Payload: []byte{},
		Headers: []ferry.Header{{Key: HeaderOriginalID, Value: []byte(e.Original.ID.String())}, {Key: HeaderState, Value: []byte(state)}}}
}

// publishWithMarker writes msg and its entry's marker atomically when the
// backend can; otherwise msg first, so a crash in between leaves the entry
// dead and a rerun re-publishes msg with the same ID (deduplicated within
// the log's window).
func (q *Queue) publishWithMarker(ctx context.Context, msg, marker *ferry.Message) error {
	if tx, ok := q.b.(backend.Transactional); ok {
		return tx.PublishAndCommit(ctx, nil, []*ferry.Message{msg, marker})
	}
	if err := q.b.Publish(ctx, msg); err != nil {
		return err
	}
	return q.b.Publish(ctx, marker)
}
