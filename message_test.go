package ferry

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestLogAttrsCarryIDsAndTrace(t *testing.T) {
	m := &Message{ID: NewID(), Topic: "orders", Partition: 2, Offset: 7}
	m.SetHeader(HeaderCorrelationID, []byte("checkout-42"))
	m.SetHeader("traceparent", []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Warn("retrying", m.LogAttrs())
	for _, want := range []string{"message.id=" + m.ID.String(), "message.topic=orders", "message.partition=2", "message.offset=7",
		"message.correlation_id=checkout-42", "message.trace_id=4bf92f3577b34da6a3ce929d0e0e4736"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log line lacks %s: %s", want, buf.String())
		}
	}
	buf.Reset()
	slog.New(slog.NewTextHandler(&buf, nil)).Warn("x", (&Message{ID: NewID(), Topic: "t"}).LogAttrs())
	if strings.Contains(buf.String(), "trace_id") || strings.Contains(buf.String(), "correlation_id") {
		t.Errorf("absent IDs logged: %s", buf.String())
	}
}

// NewIDs gives valid UUIDv7s (version and variant as uuid.Parse reads
// them, the time of the call), unique, in increasing order within a call,
// across many reads of the random source.
func TestNewIDsAreOrderedUniqueV7s(t *testing.T) {
	before := time.Now().Add(-time.Millisecond)
	ids := make([]ID, 1000)
	NewIDs(ids)
	after := time.Now().Add(time.Millisecond)
	seen := map[ID]bool{}
	for i, id := range ids {
		u, err := uuid.Parse(id.String())
		if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 {
			t.Fatalf("ID %d %s: version %d variant %v (%v)", i, id, u.Version(), u.Variant(), err)
		}
		if at := time.Unix(u.Time().UnixTime()); at.Before(before.Truncate(time.Second)) || at.After(after) {
			t.Fatalf("ID %d %s carries time %v, not between %v and %v", i, id, at, before, after)
		}
		if seen[id] {
			t.Fatalf("ID %d %s repeated", i, id)
		}
		seen[id] = true
		if i > 0 && bytes.Compare(ids[i-1][:8], id[:8]) >= 0 {
			t.Fatalf("ID %d %s does not sort after %s", i, id, ids[i-1])
		}
	}
	var zero [8]byte
	if bytes.Equal(ids[999][8:], zero[:]) || bytes.Equal(ids[0][9:], ids[64][9:]) {
		t.Fatalf("random bits missing: %s, %s", ids[0], ids[64])
	}
}
