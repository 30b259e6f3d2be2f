package commitlog

import (
	"fmt"
	"sort"
	"sync"

	"github.com/ferrymq/ferry/vfs"
)

// Open files are bounded (G6): a segment's file is opened when a reader
// needs it and closed again, least recently used first, once more than
// WithMaxOpenSegments are open and nobody reads them. The active segment,
// which the writer appends to, stays open.
//
// Lock order: Log.mu, then segment.mu.

// segment is one file of the write-ahead log.
type segment struct {
	l    *Log
	id   uint32
	path string

	mu      sync.Mutex
	f       vfs.File // nil while closed
	readers int      // acquired and not yet released
	pinned  bool     // the writer's active segment: never closed by the cache
	removed bool     // deleted (or the log closed): close once unread
	used    int64    // Log.segClock at the last acquire
}

func (l *Log) newSegment(id uint32) *segment {
	return &segment{l: l, id: id, path: l.segPath(id)}
}

// openLocked opens the file if the cache closed it.
func (s *segment) openLocked() error {
	if s.f != nil {
		return nil
	}
	var f vfs.File
	var err error
	if s.l.cfg.readOnly {
		f, err = s.l.cfg.fs.Open(s.path)
	} else {
		f, err = s.l.cfg.fs.OpenRW(s.path)
	}
	if err != nil {
		return fmt.Errorf("commitlog: open segment: %w", err)
	}
	s.f = f
	s.l.openSegs.Add(1)
	return nil
}

func (s *segment) closeLocked() {
	if s.f != nil {
		s.f.Close()
		s.f = nil
		s.l.openSegs.Add(-1)
	}
}

// file returns the open file, for recovery and the writer, which own the
// segment while they use it (no reader evicts it meanwhile: recovery runs
// before any, and the active segment is pinned).
func (s *segment) file() (vfs.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.openLocked(); err != nil {
		return nil, err
	}
	return s.f, nil
}

// pin keeps the segment open (the active one) or lets the cache close it.
func (s *segment) pin(on bool) {
	s.mu.Lock()
	s.pinned = on
	s.mu.Unlock()
}

// release ends a reader's use of the segment.
func (s *segment) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.readers--
	if s.readers == 0 && s.removed {
		s.closeLocked()
	}
}

// remove marks the segment deleted: its file closes when the last reader
// releases it.
func (s *segment) remove() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed = true
	if s.readers == 0 {
		s.closeLocked()
	}
}

// acquireSegment returns the segment, open, with a reference the caller
// must release; nil if it was deleted.
func (l *Log) acquireSegment(id uint32) (*segment, error) {
	l.mu.RLock()
	s := l.segs[id]
	l.mu.RUnlock()
	if s == nil {
		return nil, nil
	}
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return nil, nil
	}
	if err := s.openLocked(); err != nil {
		s.mu.Unlock()
		return nil, err
	}
	s.readers++
	s.used = l.segClock.Add(1)
	s.mu.Unlock()
	if int(l.openSegs.Load()) > l.cfg.maxOpenSegments {
		l.evictSegments()
	}
	return s, nil
}

// evictSegments closes the least recently used files nobody reads until
// at most maxOpenSegments are open (or only files in use are left).
func (l *Log) evictSegments() {
	type candidate struct {
		s    *segment
		used int64
	}
	l.mu.RLock()
	var idle []candidate
	for _, s := range l.segs {
		s.mu.Lock()
		if s.f != nil && s.readers == 0 && !s.pinned {
			idle = append(idle, candidate{s, s.used})
		}
		s.mu.Unlock()
	}
	l.mu.RUnlock()
	sort.Slice(idle, func(i, j int) bool { return idle[i].used < idle[j].used })
	for _, c := range idle {
		s := c.s
		if int(l.openSegs.Load()) <= l.cfg.maxOpenSegments {
			return
		}
		s.mu.Lock()
		if s.readers == 0 && !s.pinned {
			s.closeLocked()
		}
		s.mu.Unlock()
	}
}
