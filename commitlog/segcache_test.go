package commitlog

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrymq/ferry/vfs"
)

// handleFS counts the segment files open at once, and the most ever.
type handleFS struct {
	vfs.FS
	open, peak atomic.Int64
}

type handleFile struct {
	vfs.File
	fs   *handleFS
	once sync.Once
}

func (f *handleFile) Close() error {
	f.once.Do(func() { f.fs.open.Add(-1) })
	return f.File.Close()
}

func (h *handleFS) track(f vfs.File, name string, err error) (vfs.File, error) {
	if err != nil || !strings.HasSuffix(name, segSuffix) {
		return f, err
	}
	n := h.open.Add(1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return &handleFile{File: f, fs: h}, nil
}

func (h *handleFS) Create(name string) (vfs.File, error) {
	f, err := h.FS.Create(name)
	return h.track(f, name, err)
}

func (h *handleFS) OpenRW(name string) (vfs.File, error) {
	f, err := h.FS.OpenRW(name)
	return h.track(f, name, err)
}

func (h *handleFS) Open(name string) (vfs.File, error) {
	f, err := h.FS.Open(name)
	return h.track(f, name, err)
}

// TestOpenSegmentsBounded: a log of some 60 segments, read whole by three
// concurrent readers and reopened, never has more segment files open than
// WithMaxOpenSegments, plus one per concurrent reader (a file being read
// stays open until the read ends), plus the active segment.
func TestOpenSegmentsBounded(t *testing.T) {
	const limit, readers = 4, 3
	fs := &handleFS{FS: vfs.NewMemFS()}
	opts := append([]Opt{WithMaxOpenSegments(limit)}, smallSegments...)
	l := openTest(t, fs, opts...)
	mustCreate(t, l, "t", TopicConfig{Partitions: readers})
	fill(t, l, "t", 8000, func(i int) string { return fmt.Sprint(i) })
	if n := len(l.segs); n < 50 {
		t.Fatalf("setup: %d segments", n)
	}
	check := func(what string) {
		t.Helper()
		if p := fs.peak.Load(); p > limit+readers+1 {
			t.Fatalf("%s: %d segment files open at once, limit %d (+%d readers, +1 active)", what, p, limit, readers)
		}
	}
	check("appending")
	read := func(l *Log) {
		var wg sync.WaitGroup
		var total atomic.Int64
		for p := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				total.Add(int64(len(readAll(t, l, "t", int32(p)))))
			}()
		}
		wg.Wait()
		if total.Load() != 8000 {
			t.Fatalf("read %d messages, want 8000", total.Load())
		}
	}
	read(l)
	check("reading")
	l.Close()
	if n := fs.open.Load(); n != 0 {
		t.Fatalf("%d segment files still open after Close", n)
	}
	fs.peak.Store(0)
	removeCheckpoints(t, fs.FS.(*vfs.MemFS)) // replay every segment
	l = openTest(t, fs, opts...)
	defer l.Close()
	check("replaying")
	read(l)
	check("reading after reopen")
}
