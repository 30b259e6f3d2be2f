package ferry

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
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
