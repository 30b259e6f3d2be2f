// Package dlq reads and operates dead-letter queues: list and filter
// entries, inspect one, redrive (to the source topic or another,
// rate-limited, with progress) and purge. It also defines the entry format
// the runtime writes.
//
// A dead-letter queue is a topic. An entry is the original message — key,
// payload and headers untouched — plus ferry-dlq-* headers saying where it
// came from and why it failed. Changing an entry's state appends a marker
// record for it (header ferry-dlq-state); the entry's state is its latest
// marker's. A redrive back to the source topic is a request marker: the
// consumer owning the source partition handles the entry from the DLQ
// (Index is how it follows the topic). A move to another topic writes the
// copy and the marker in one atomic batch where the backend supports it,
// with the copy's ID derived from the entry, so a move run twice does not
// duplicate anything.
package dlq

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/retry"
)

// Dead-letter metadata headers.
const (
	HeaderOriginalID   = "ferry-dlq-original-id"
	HeaderTopic        = "ferry-dlq-topic"
	HeaderPartition    = "ferry-dlq-partition"
	HeaderOffset       = "ferry-dlq-offset"
	HeaderOriginalTime = "ferry-dlq-original-time"
	HeaderGroup        = "ferry-dlq-group"
	HeaderHandler      = "ferry-dlq-handler"
	HeaderAttempts     = "ferry-dlq-attempts"
	HeaderFirstFailure = "ferry-dlq-first-failure"
	HeaderLastFailure  = "ferry-dlq-last-failure"
	HeaderError        = "ferry-dlq-error"
	HeaderClass        = "ferry-dlq-class"
	HeaderReason       = "ferry-dlq-reason"
	HeaderStack        = "ferry-dlq-stack"
	// HeaderRetryAt is the time a scheduled retry is due.
	HeaderRetryAt = "ferry-dlq-retry-at"
	// HeaderState marks a state record (a marker): the entry's new state.
	HeaderState = "ferry-dlq-state"
	// HeaderRedriveOf is set on a message handled from the DLQ, and on a
	// copy moved to another topic: the ID of the original message.
	HeaderRedriveOf = "ferry-redrive-of"

	maxErrorBytes = 4 << 10
)

// ClassParked marks an entry that did not fail itself: it was parked
// behind an earlier dead letter of its key, to keep the key's order.
const ClassParked retry.Class = "parked"

// ClassScheduled marks a durable retry: the message failed transiently and
// its next attempt is due at RetryAt, too far off to wait in memory. The
// consumer that owns its source partition redrives it (with its key's
// parked messages) once due; until then its key is parked behind it.
const ClassScheduled retry.Class = "scheduled"

// Failure says why a message is dead-lettered.
type Failure struct {
	Group, Handler string
	Attempts       int
	First, Last    time.Time
	Err            error
	Class          retry.Class
	Reason         string
	// RetryAt is when a scheduled retry (ClassScheduled) is due.
	RetryAt time.Time
}

// NewEntry builds the dead letter of m for topic dlqTopic. Its ID is
// derived from the group and m's ID, so dead-lettering m again (after a
// crash before the offset commit) is deduplicated by the log.
func NewEntry(m *ferry.Message, dlqTopic string, f Failure) *ferry.Message {
	hdr := append([]ferry.Header(nil), m.Headers...)
	add := func(k, v string) { hdr = append(hdr, ferry.Header{Key: k, Value: []byte(v)}) }
	add(HeaderOriginalID, m.ID.String())
	add(HeaderTopic, m.Topic)
	add(HeaderPartition, strconv.Itoa(int(m.Partition)))
	add(HeaderOffset, strconv.FormatUint(m.Offset, 10))
	add(HeaderOriginalTime, m.Time.UTC().Format(time.RFC3339Nano))
	add(HeaderGroup, f.Group)
	hdr = append(hdr, failureHeaders(f)...)
	payload := m.Payload
	if payload == nil {
		payload = []byte{}
	}
	return &ferry.Message{ID: ferry.DeriveID("dlq", f.Group, m.ID), Topic: dlqTopic, Key: m.Key, Payload: payload, Headers: hdr}
}

// failureHeaders are the headers that say how a message failed: on its
// dead letter, and on the marker of an entry that failed again.
func failureHeaders(f Failure) []ferry.Header {
	text := ""
	if f.Err != nil {
		text = f.Err.Error()
	}
	if len(text) > maxErrorBytes {
		text = text[:maxErrorBytes]
	}
	var hdr []ferry.Header
	add := func(k, v string) { hdr = append(hdr, ferry.Header{Key: k, Value: []byte(v)}) }
	add(HeaderHandler, f.Handler)
	add(HeaderAttempts, strconv.Itoa(f.Attempts))
	add(HeaderFirstFailure, f.First.UTC().Format(time.RFC3339Nano))
	add(HeaderLastFailure, f.Last.UTC().Format(time.RFC3339Nano))
	add(HeaderError, text)
	add(HeaderClass, string(f.Class))
	add(HeaderReason, f.Reason)
	if !f.RetryAt.IsZero() {
		add(HeaderRetryAt, f.RetryAt.UTC().Format(time.RFC3339Nano))
	}
	var pe *retry.PanicError
	if errors.As(f.Err, &pe) {
		add(HeaderStack, string(pe.Stack))
	}
	return hdr
}

// Entry is a parsed dead letter.
type Entry struct {
	// Record is the dead letter as stored; its Offset is its position in
	// the dead-letter topic.
	Record *ferry.Message
	// Original is the message as it was before it failed: key, payload and
	// headers untouched, with its ID, topic, partition, offset and time.
	Original     *ferry.Message
	Group        string
	Handler      string
	Attempts     int
	FirstFailure time.Time
	LastFailure  time.Time
	Error        string
	Class        retry.Class
	Reason       string
	Stack        string
	// RetryAt is when a scheduled retry is due (zero for other classes).
	RetryAt time.Time
	// State is "dead" until the entry is requested (for its owner to
	// handle it), redriven or purged; see StateDead.
	State   string
	stateAt uint64 // offset of the marker that set State (0: none)
}

// Parse reads a dead letter's metadata. A record that is not a dead letter
// (no original ID) is an error.
func Parse(r *ferry.Message) (Entry, error) {
	get := func(k string) string { v, _ := r.Header(k); return string(v) }
	e := Entry{Record: r, State: "dead"}
	id, err := ferry.ParseID(get(HeaderOriginalID))
	if err != nil {
		return e, fmt.Errorf("dlq: record at offset %d is not a dead letter: %w", r.Offset, err)
	}
	orig := &ferry.Message{ID: id, Topic: get(HeaderTopic), Key: r.Key, Payload: r.Payload}
	for _, h := range r.Headers {
		if len(h.Key) < 10 || h.Key[:10] != "ferry-dlq-" {
			orig.Headers = append(orig.Headers, h)
		}
	}
	p, _ := strconv.Atoi(get(HeaderPartition))
	orig.Partition = int32(p)
	orig.Offset, _ = strconv.ParseUint(get(HeaderOffset), 10, 64)
	orig.Time, _ = time.Parse(time.RFC3339Nano, get(HeaderOriginalTime))
	e.Original = orig
	e.Group, e.Handler = get(HeaderGroup), get(HeaderHandler)
	e.Attempts, _ = strconv.Atoi(get(HeaderAttempts))
	e.FirstFailure, _ = time.Parse(time.RFC3339Nano, get(HeaderFirstFailure))
	e.LastFailure, _ = time.Parse(time.RFC3339Nano, get(HeaderLastFailure))
	e.Error, e.Class, e.Reason, e.Stack = get(HeaderError), retry.Class(get(HeaderClass)), get(HeaderReason), get(HeaderStack)
	if at := get(HeaderRetryAt); at != "" {
		e.RetryAt, _ = time.Parse(time.RFC3339Nano, at)
	}
	return e, nil
}
