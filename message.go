package ferry

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
)

// Standard header names. They follow CloudEvents attribute names (with the
// "ce-" prefix used by the CloudEvents binary content mode) so a message can
// cross into other systems without mapping.
const (
	HeaderType          = "ce-type"            // kind of event, e.g. "order.placed"
	HeaderSchemaVersion = "ce-dataschema"      // schema (version) the payload follows
	HeaderContentType   = "ce-datacontenttype" // media type of the payload, e.g. "application/json"
	HeaderSource        = "ce-source"          // producer that emitted the event
	HeaderCorrelationID = "ce-correlationid"   // ID shared by every message of one flow
	HeaderCausationID   = "ce-causationid"     // ID of the message that caused this one
)

// ID is a message's immutable identity: a UUIDv7, so IDs sort by creation
// time, which keeps deduplication windows and indexes cache-friendly.
type ID [16]byte

// NewID returns a fresh UUIDv7. It panics only if the operating system's
// random source fails, which the uuid package treats as fatal as well.
func NewID() ID {
	return ID(uuid.Must(uuid.NewV7()))
}

// NewIDs fills ids with fresh UUIDv7s, like as many calls of NewID, for
// a fraction of their cost: one reading of the clock and one read of the
// random source serve them all (a writer naming a batch of a hundred
// messages spent a fifth of its time in NewID). Within the call they
// sort in the order of ids: the 12 bits after the millisecond count on
// from the sub-millisecond time, as NewID's do; 62 random bits keep them
// unique.
func NewIDs(ids []ID) {
	const perRead = 64
	var random [8 * perRead]byte
	nano := time.Now().UnixNano()
	ms := nano / int64(time.Millisecond)
	v := uint64(ms)<<12 | uint64(nano-ms*int64(time.Millisecond))>>8
	for len(ids) > 0 {
		n := min(len(ids), perRead)
		rand.Read(random[:8*n]) // never fails: crypto/rand crashes the program first
		for i := range ids[:n] {
			id := &ids[i]
			t, seq := v>>12, v&0xfff
			id[0], id[1], id[2], id[3], id[4], id[5] = byte(t>>40), byte(t>>32), byte(t>>24), byte(t>>16), byte(t>>8), byte(t)
			id[6], id[7] = 0x70|byte(seq>>8), byte(seq)
			copy(id[8:], random[8*i:8*i+8])
			id[8] = id[8]&0x3f | 0x80 // the RFC 9562 variant
			v++
		}
		ids = ids[n:]
	}
}

// ParseID parses the canonical textual form of an ID.
func ParseID(s string) (ID, error) {
	u, err := uuid.Parse(s)
	if err != nil {
		return ID{}, fmt.Errorf("ferry: parse message ID %q: %w", s, err)
	}
	return ID(u), nil
}

// IsZero reports whether the ID is unset.
func (id ID) IsZero() bool { return id == ID{} }

// String returns the canonical textual form of the ID.
func (id ID) String() string { return uuid.UUID(id).String() }

// Header is one message header. Headers are an ordered list, not a map, so
// that their order and any repeated names survive a round trip through a log.
type Header struct {
	Key   string
	Value []byte
}

// Message is the envelope every ferry component passes around. The comment on
// each field says who sets it.
type Message struct {
	// ID is set by the producer (NewID if left zero when published) and never
	// changes afterwards: redeliveries, retries and DLQ redrives keep it, which
	// is what producer deduplication and idempotency stores key on.
	ID ID
	// Topic is set by the producer.
	Topic string
	// Key is set by the producer. Messages with the same key go to the same
	// partition and are processed in order. A nil key spreads messages
	// round-robin over partitions.
	Key []byte
	// Partition is set by the log on publish (from the key unless the
	// producer pinned it by setting PinPartition).
	Partition int32
	// PinPartition, when true, makes the log use Partition as given instead
	// of deriving it from the key.
	PinPartition bool
	// Offset is set by the log: the message's position in its partition.
	Offset uint64
	// Time is set by the log on append when zero; a producer may set it.
	Time time.Time
	// NotBefore, if set by the producer, delays delivery: consumers do not
	// see the message before this time.
	NotBefore time.Time
	// Headers are set by the producer; see the Header* constants.
	Headers []Header
	// Payload is set by the producer. A nil payload is a tombstone: on a
	// compacted topic it deletes the key.
	Payload []byte
}

// Header returns the value of the first header named key, and whether it
// was present.
func (m *Message) Header(key string) ([]byte, bool) {
	for _, h := range m.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return nil, false
}

// SetHeader replaces the first header named key, or appends it.
func (m *Message) SetHeader(key string, value []byte) {
	for i := range m.Headers {
		if m.Headers[i].Key == key {
			m.Headers[i].Value = value
			return
		}
	}
	m.Headers = append(m.Headers, Header{Key: key, Value: value})
}

// LogAttrs returns the attributes that identify m on a log line: its ID,
// topic, partition and offset, its correlation ID and, if it carries a W3C
// trace context (header traceparent), its trace ID. Every ferry log line
// about a message carries them, so one grep finds a message's story.
func (m *Message) LogAttrs() slog.Attr {
	attrs := []any{slog.String("id", m.ID.String()), slog.String("topic", m.Topic), slog.Int("partition", int(m.Partition)), slog.Uint64("offset", m.Offset)}
	if v, ok := m.Header(HeaderCorrelationID); ok {
		attrs = append(attrs, slog.String("correlation_id", string(v)))
	}
	// traceparent: version "-" trace-id (32 hex) "-" parent-id "-" flags.
	if v, ok := m.Header("traceparent"); ok && len(v) >= 35 && v[2] == '-' {
		attrs = append(attrs, slog.String("trace_id", string(v[3:35])))
	}
	return slog.Group("message", attrs...)
}

// IsTombstone reports whether the message deletes its key on a compacted
// topic (its payload is nil).
func (m *Message) IsTombstone() bool { return m.Payload == nil }

// DeriveID returns a deterministic ID for a message derived from message
// id (a dead letter, a redrive, a handler's output): the same kind, scope
// and id always give the same result, so producing the derived message
// twice is deduplicated by the log. It is a UUID of version 8 (custom)
// built from SHA-256.
func DeriveID(kind, scope string, id ID) ID {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(scope))
	h.Write([]byte{0})
	h.Write(id[:])
	var out ID
	copy(out[:], h.Sum(nil))
	out[6] = out[6]&0x0f | 0x80 // version 8
	out[8] = out[8]&0x3f | 0x80 // RFC 4122 variant
	return out
}

// PartitionForKey returns the partition a key maps to among n partitions:
// FNV-1a 32-bit of the key, modulo n. It never changes, so a key stays in
// one partition for the life of a topic, on every backend.
func PartitionForKey(key []byte, n int) int32 {
	h := uint32(2166136261) // FNV-1a offset basis
	for _, c := range key {
		h ^= uint32(c)
		h *= 16777619 // FNV prime
	}
	return int32(h % uint32(n))
}
