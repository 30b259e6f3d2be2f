package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// globals are the flags every command over a data directory shares.
type globals struct {
	dir    string
	json   bool
	remote *remote
}

func addGlobals(root *cobra.Command) *globals {
	g := &globals{remote: &remote{}}
	root.PersistentFlags().StringVar(&g.dir, "dir", "./ferry-data", "data directory")
	root.PersistentFlags().BoolVar(&g.json, "json", false, "print JSON instead of tables")
	g.remote.add(root)
	return g
}

// open opens the data directory: read-only commands work while another
// process owns it; writers get the owner's PID in the error, and what to
// do. Only
// create (topics create) makes a missing directory: anywhere else a
// mistyped --dir must not leave a new directory behind.
func (g *globals) open(ctx context.Context, write bool) (*commitlog.Log, error) {
	return g.openDir(ctx, write, false)
}

func (g *globals) openDir(ctx context.Context, write, create bool, opts ...commitlog.Opt) (*commitlog.Log, error) {
	if _, err := os.Stat(g.dir); err != nil && !create {
		return nil, usageError{fmt.Errorf("data directory %s: %w (create it with 'ferry topics create')", g.dir, err)}
	}
	if !write {
		opts = append(opts, commitlog.WithReadOnly())
	}
	l, err := commitlog.Open(ctx, g.dir, opts...)
	if write && errors.Is(err, ferry.ErrLocked) {
		// The reading commands open read-only beside the owner; that
		// would not help a writer.
		return nil, fmt.Errorf("%w; writing needs the directory to itself: stop that process, or write through it", err)
	}
	return l, err
}

// print writes v as JSON, or calls table to write a human table.
func (g *globals) print(w io.Writer, v any, table func(*tabwriter.Writer)) error {
	if g.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// isTerminal reports whether w is a terminal (colours, progress bars).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
