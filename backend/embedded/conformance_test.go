package embedded_test

import (
	"context"
	"testing"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/backendtest"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
)

// The embedded backend passes the conformance suite, on disk.
func TestConformance(t *testing.T) {
	backendtest.Run(t, backendtest.Harness{New: func(t *testing.T) backend.Backend {
		l, err := commitlog.Open(context.Background(), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		b := embedded.New(l)
		t.Cleanup(func() { b.Close(); l.Close() })
		return b
	}})
}
