// Package memlog gives the tests of the packages above the log what most
// of them start from: a commitlog on a fresh in-memory filesystem and an
// embedded backend over it, both closed when the test ends.
package memlog

import (
	"context"
	"testing"

	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/vfs"
)

// Open opens a log in the directory /log of a fresh in-memory filesystem,
// with opts, and closes it when t ends.
func Open(t testing.TB, opts ...commitlog.Opt) *commitlog.Log {
	t.Helper()
	l, err := commitlog.Open(context.Background(), "/log", append([]commitlog.Opt{commitlog.WithFS(vfs.NewMemFS())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// Backend opens a log as Open does and returns an embedded backend over
// it (closed before the log when t ends), and the log.
func Backend(t testing.TB, opts ...commitlog.Opt) (*embedded.Backend, *commitlog.Log) {
	t.Helper()
	l := Open(t, opts...)
	b := embedded.New(l)
	t.Cleanup(func() { b.Close() })
	return b, l
}
