package admin

import (
	"encoding/base64"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/ferrymq/ferry"
)

// Encodings of keys, payloads and header values in Message.
const (
	EncodingUTF8   = "utf-8"
	EncodingBase64 = "base64"
)

// Topic describes a topic.
type Topic struct {
	Name       string `json:"name"`
	Partitions int    `json:"partitions"`
	// Retention is how long messages are kept ("" forever, or unknown).
	Retention string `json:"retention,omitempty"`
	// RetentionBytes bounds each partition's size (0: unbounded).
	RetentionBytes int64 `json:"retention_bytes,omitempty"`
	// Compact keeps only each key's latest message.
	Compact bool `json:"compact,omitempty"`
	// DedupWindow is how long message IDs are remembered ("": the
	// backend's default; "none": not at all).
	DedupWindow string `json:"dedup_window,omitempty"`
	// Messages counts the messages retained (ends minus starts).
	Messages uint64 `json:"messages"`
	// Bytes is the size stored, -1 if the backend does not say.
	Bytes int64 `json:"bytes"`
	// Bounds are per partition; Describe fills them, List does not.
	Bounds []PartitionBounds `json:"bounds,omitempty"`
}

// PartitionBounds is a partition's first retained offset and its end.
type PartitionBounds struct {
	Partition int32  `json:"partition"`
	Start     uint64 `json:"start"`
	End       uint64 `json:"end"`
}

// CreateTopic is the body of a topic creation.
type CreateTopic struct {
	Name       string `json:"name"`
	Partitions int    `json:"partitions"`
	// Retention, a Go duration (72h), drops older messages; "" keeps them.
	Retention string `json:"retention,omitempty"`
	// RetentionBytes bounds each partition's size (0: unbounded).
	RetentionBytes int64 `json:"retention_bytes,omitempty"`
	// Compact keeps only each key's latest message.
	Compact bool `json:"compact,omitempty"`
}

// GroupDeleted answers a group's deletion.
type GroupDeleted struct {
	Group   string `json:"group"`
	Deleted bool   `json:"deleted"`
}

// AlterTopic is the body of a topic alteration: the fields given change,
// the others stay. Partitions, compaction and deduplication are fixed at
// creation.
type AlterTopic struct {
	// Retention, a Go duration (72h), drops older messages; "0" keeps
	// them.
	Retention *string `json:"retention,omitempty"`
	// RetentionBytes bounds each partition's size (0: unbounded).
	RetentionBytes *int64 `json:"retention_bytes,omitempty"`
}

// Search is a bounded search of a topic.
type Search struct {
	// Key, if set, selects messages with this key (text).
	Key *string `json:"key,omitempty"`
	// Header, NAME or NAME=VALUE, selects messages with such a header.
	Header string `json:"header,omitempty"`
	// Start is where the scan starts in each partition (ParseStart).
	Start string `json:"start,omitempty"`
	// Limit bounds the matches (0: DefaultLimit), Scan the messages read
	// (0: DefaultScan).
	Limit int `json:"limit,omitempty"`
	Scan  int `json:"scan,omitempty"`
}

// Header is one message header; repeated names stay in order.
type Header struct {
	Key   string `json:"key"`
	Value string `json:"value"` // in the message's Encoding
}

// Message is a message as the API returns it. Key, Payload and header
// values are text when all of them are valid UTF-8 (Encoding "utf-8"),
// and base64 otherwise (Encoding "base64").
type Message struct {
	ID        string    `json:"id"`
	Topic     string    `json:"topic"`
	Partition int32     `json:"partition"`
	Offset    uint64    `json:"offset"`
	Time      time.Time `json:"time"`
	Encoding  string    `json:"encoding"`
	Key       string    `json:"key,omitempty"`
	Headers   []Header  `json:"headers,omitempty"`
	Payload   string    `json:"payload"`
	// NotBefore, if set, delays delivery until then (see
	// ferry.Message.NotBefore): a browse shows the message, a consumer
	// does not get it (nor anything after it in its partition) before.
	NotBefore *time.Time `json:"not_before,omitempty"`
}

// NewMessage renders m for the API.
func NewMessage(m *ferry.Message) Message {
	enc := EncodingUTF8
	ok := utf8.Valid(m.Key) && utf8.Valid(m.Payload)
	for _, h := range m.Headers {
		ok = ok && utf8.Valid(h.Value)
	}
	conv := func(b []byte) string { return string(b) }
	if !ok {
		enc = EncodingBase64
		conv = base64.StdEncoding.EncodeToString
	}
	out := Message{ID: m.ID.String(), Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Time: m.Time.UTC(), Encoding: enc,
		Key: conv(m.Key), Payload: conv(m.Payload)}
	for _, h := range m.Headers {
		out.Headers = append(out.Headers, Header{Key: h.Key, Value: conv(h.Value)})
	}
	if !m.NotBefore.IsZero() {
		nb := m.NotBefore.UTC()
		out.NotBefore = &nb
	}
	return out
}

// Decode returns the message m renders, bytes as they were.
func (m Message) Decode() (*ferry.Message, error) {
	conv := func(s string) ([]byte, error) { return []byte(s), nil }
	switch m.Encoding {
	case EncodingUTF8, "":
	case EncodingBase64:
		conv = base64.StdEncoding.DecodeString
	default:
		return nil, fmt.Errorf("message encoding %q: want %s or %s: %w", m.Encoding, EncodingUTF8, EncodingBase64, ferry.ErrInvalidArgument)
	}
	out := &ferry.Message{Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Time: m.Time}
	if m.NotBefore != nil {
		out.NotBefore = *m.NotBefore
	}
	var err error
	if m.ID != "" {
		if out.ID, err = ferry.ParseID(m.ID); err != nil {
			return nil, err
		}
	}
	if out.Key, err = conv(m.Key); err != nil {
		return nil, fmt.Errorf("message key: %w: %w", ferry.ErrInvalidArgument, err)
	}
	if len(out.Key) == 0 {
		out.Key = nil
	}
	if out.Payload, err = conv(m.Payload); err != nil {
		return nil, fmt.Errorf("message payload: %w: %w", ferry.ErrInvalidArgument, err)
	}
	for _, h := range m.Headers {
		v, err := conv(h.Value)
		if err != nil {
			return nil, fmt.Errorf("header %q: %w: %w", h.Key, ferry.ErrInvalidArgument, err)
		}
		out.Headers = append(out.Headers, ferry.Header{Key: h.Key, Value: v})
	}
	return out, nil
}

// MessagePage is a page of a partition's messages.
type MessagePage struct {
	Messages []Message `json:"messages"`
	// Next is the offset to ask for the following page.
	Next uint64 `json:"next"`
	// End is the partition's end when the page was read.
	End uint64 `json:"end"`
}

// SearchResult is what a bounded search found.
type SearchResult struct {
	Messages []Message `json:"messages"`
	// Scanned counts the messages read; Truncated says the scan stopped
	// at its bound before the end of the topic.
	Scanned   int  `json:"scanned"`
	Truncated bool `json:"truncated"`
}

// Produced is where one produced message went.
type Produced struct {
	ID        string `json:"id"`
	Partition int32  `json:"partition"`
	Offset    uint64 `json:"offset"`
	// Duplicate says the message's ID was in the topic's deduplication
	// window: it was not written again, and Partition and Offset are the
	// original's. Only backends that say so report it
	// (backend.DedupPublisher: the embedded log, JetStream).
	Duplicate bool `json:"duplicate,omitempty"`
}

// GroupSummary is one line of the group list.
type GroupSummary struct {
	Group      string `json:"group"`
	Partitions int    `json:"partitions"`
	Lag        uint64 `json:"lag"`
	Members    int    `json:"members"` // live members the backend knows of
}

// GroupPartition is a group's position in one partition.
type GroupPartition struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Committed uint64 `json:"committed"`
	End       uint64 `json:"end"`
	Lag       uint64 `json:"lag"`
}

// Group describes a consumer group.
type Group struct {
	Group      string           `json:"group"`
	Partitions []GroupPartition `json:"partitions"`
	// Members are the live members the backend knows of.
	Members []string `json:"members"`
	// Running are the members this process runs, with their live state.
	Running []Running `json:"running"`
}

// Running is the live state of a consumer this process runs.
type Running struct {
	Member  string       `json:"member"`
	Healthy bool         `json:"healthy"`
	Problem string       `json:"problem,omitempty"`
	Stats   RunningStats `json:"stats"`
	Owned   []OwnedLane  `json:"partitions"`
}

// RunningStats are a running consumer's buffers and parked keys.
type RunningStats struct {
	Buffered       int    `json:"buffered"`
	InFlight       int    `json:"in_flight"`
	Waiting        int    `json:"waiting"`
	Keys           int    `json:"keys"`
	ParkedKeys     int    `json:"parked_keys"`
	ParkedMessages int    `json:"parked_messages"`
	Breaker        string `json:"breaker,omitempty"`
}

// OwnedLane is a partition a running consumer owns.
type OwnedLane struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Committed uint64 `json:"committed"`
	Watermark uint64 `json:"watermark"`
	Next      uint64 `json:"next"`
	Buffered  int    `json:"buffered"`
}

// Reset is the body of a group reset.
type Reset struct {
	Topic string `json:"topic"`
	// Partition, if set, resets only that partition.
	Partition *int32 `json:"partition,omitempty"`
	// To is earliest, latest, an offset, -N (N before each end), an RFC
	// 3339 time or a duration ago.
	To string `json:"to"`
	// Force resets while members are live; they may commit over it.
	Force bool `json:"force,omitempty"`
}

// ResetOffset is where a reset moved a group in one partition.
type ResetOffset struct {
	Group     string `json:"group"`
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    uint64 `json:"offset"`
}

// DeadLetter is a DLQ entry as the API returns it.
type DeadLetter struct {
	ID           string    `json:"id"` // the original message's ID
	State        string    `json:"state"`
	Topic        string    `json:"topic"`
	Partition    int32     `json:"partition"`
	Offset       uint64    `json:"offset"`
	Key          string    `json:"key"`
	Group        string    `json:"group"`
	Handler      string    `json:"handler"`
	Attempts     int       `json:"attempts"`
	FirstFailure time.Time `json:"first_failure"`
	LastFailure  time.Time `json:"last_failure"`
	Class        string    `json:"class"`
	Error        string    `json:"error"`
	Reason       string    `json:"reason,omitempty"`
	// RetryAt is when a scheduled retry is due.
	RetryAt *time.Time `json:"retry_at,omitempty"`
	Stack   string     `json:"stack,omitempty"`
	// Message is the original message; DLQ list leaves it out.
	Message *Message `json:"message,omitempty"`
	// Position is where a list stands after this entry: per partition of
	// the DLQ topic, the offset of the last entry listed ("P:O",
	// comma-separated), the After of the next page. Shown alone, it is
	// the place of the entry's own record.
	Position string `json:"position"`
}

// Page bounds a DLQ list: at most Limit entries (0: DefaultLimit, at most
// MaxLimit) after the position After (a listed entry's; empty: from the
// first). Positions do not move when entries are resolved or appended,
// so paging through a DLQ that changes meanwhile skips nothing still
// listed.
type Page struct {
	Limit int    `json:"limit,omitempty"`
	After string `json:"after,omitempty"`
}

// Redrive is the body of a redrive.
type Redrive struct {
	Filter Filter `json:"filter"`
	// To moves the entries to this topic instead of having their source
	// partition's consumer handle them.
	To string `json:"to,omitempty"`
	// IncludeRequested makes a move (To) take the entries already
	// requested too, which their owner may be handling: only for an owner
	// that does not run (see dlq.RedriveOpts). Without it a move leaves
	// the keys with a requested entry to their owner.
	IncludeRequested bool `json:"include_requested,omitempty"`
	// PerSecond limits the pace (0: unlimited).
	PerSecond float64 `json:"per_second,omitempty"`
}

// RedriveResult is what a redrive did.
type RedriveResult struct {
	Entries int    `json:"entries"` // requested (or moved, with To)
	To      string `json:"to,omitempty"`
	// Left counts, after a move, the entries of the filter still
	// unresolved: those left to their owner because a key was requested.
	Left int `json:"left,omitempty"`
}

// Purge is the body of a purge.
type Purge struct {
	Filter Filter `json:"filter"`
}

// PurgeResult is what a purge did.
type PurgeResult struct {
	Purged int `json:"purged"`
}

// Progress is one step of a long operation: Done of Total.
type Progress struct {
	Done  int `json:"done"`
	Total int `json:"total"`
}

// Replay is the body of a replay.
type Replay struct {
	From string `json:"from"` // source topic
	To   string `json:"to"`   // target topic (created with the source's partitions if missing)
	// Start is earliest, latest, an offset, -N, an RFC 3339 time or a
	// duration ago.
	Start string `json:"start"`
	// Until, an RFC 3339 time or a duration ago, leaves out later messages.
	Until string `json:"until,omitempty"`
}

// ReplayResult is what a replay did.
type ReplayResult struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Created bool   `json:"created"`
	// Partitions is the target's partition count, when Created.
	Partitions   int `json:"partitions,omitempty"`
	Copied       int `json:"copied"`
	AlreadyThere int `json:"already_there"`
}

// Health is the state of the system behind the API.
type Health struct {
	Status    string   `json:"status"` // "ok" or "degraded"
	Backend   string   `json:"backend"`
	Problems  []string `json:"problems"`
	Consumers int      `json:"consumers"` // running in this process
}

// DLQSummary counts a dead-letter queue's unresolved entries.
type DLQSummary struct {
	Queue string `json:"queue"` // the DLQ topic
	Group string `json:"group"` // the consumer group it belongs to
	// Dead are entries waiting for an operator; Requested, entries a
	// redrive asked their owner to handle and it has not yet.
	Dead      int `json:"dead"`
	Requested int `json:"requested"`
	// Classes counts the unresolved entries by failure class.
	Classes map[string]int `json:"classes"`
}

// Access is what the caller may do on a topic and a group.
type Access struct {
	Name   string `json:"name"`   // the caller: token name, certificate subject, or anonymous
	Method string `json:"method"` // how it authenticated: token, mtls, console or none
	Topic  string `json:"topic,omitempty"`
	// TopicVerbs are the verbs granted on Topic, GroupVerbs on Group.
	TopicVerbs []string `json:"topic_verbs"`
	Group      string   `json:"group,omitempty"`
	GroupVerbs []string `json:"group_verbs"`
}
