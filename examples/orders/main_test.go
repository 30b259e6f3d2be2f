package main

import (
	"context"
	"strings"
	"testing"

	"github.com/ferrymq/ferry/internal/testsvc"
)

// The example runs end to end on the real PostgreSQL server.
func TestOrdersExample(t *testing.T) {
	pool, _ := testsvc.Postgres(t)
	var out strings.Builder
	if err := run(context.Background(), pool, t.TempDir(), 200, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"placed 178 orders, refused 22", "projected 178 events", "redelivered all 178 events: 0 had a second effect", "ok: every committed order"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	}
	t.Log("\n" + out.String())
}
