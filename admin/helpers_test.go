package admin

import (
	"context"
	"testing"

	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
)

// newTestBackend opens an embedded log in a temporary directory.
func newTestBackend(t testing.TB) *embedded.Backend {
	t.Helper()
	l, err := commitlog.Open(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := embedded.New(l)
	t.Cleanup(func() {
		b.Close()
		l.Close()
	})
	return b
}
