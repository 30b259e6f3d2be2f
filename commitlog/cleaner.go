package commitlog

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/ferrymq/ferry"
)

// The cleaner enforces retention and compaction with one mechanism: it
// decides which records are live, drops index entries that hold none,
// rewrites ("relocates") the few live records of mostly-dead batches in
// sealed segments, and deletes a sealed segment once no index entry points
// into it. Before deleting, it has the writer fsync and checkpoint the
// state, because after that the state that lived in the deleted segment
// (topic creations, consumer offsets) exists only in the checkpoint.

// CleanStats reports what one cleaner run did.
type CleanStats struct {
	EntriesDropped    int   // index entries whose records all expired or were compacted away
	RecordsRelocated  int   // live records rewritten out of mostly-dead batches
	SegmentsDeleted   int   // segment files removed
	BytesReclaimed    int64 // bytes of the removed segments
	RecordsCompacted  int   // records dropped by key compaction
	TombstonesExpired int   // tombstones dropped after TombstoneRetention
}

// Clean runs the cleaner once. It also runs every WithCleanInterval in the
// background.
func (l *Log) Clean(ctx context.Context) (CleanStats, error) {
	if err := l.writable(); err != nil {
		return CleanStats{}, err
	}
	l.cleanMu.Lock()
	defer l.cleanMu.Unlock()
	var st CleanStats
	now := l.cfg.now().UnixNano()
	activeID := l.activeSegmentID()
	l.mu.RLock()
	topics := make([]*topic, 0, len(l.topics))
	configs := make([]TopicConfig, 0, len(l.topics)) // AlterTopic changes them under l.mu
	for _, t := range l.topics {
		topics = append(topics, t)
		configs = append(configs, t.config)
	}
	l.mu.RUnlock()
	for ti, t := range topics {
		c := configs[ti]
		for pi, p := range t.parts {
			if drops := retentionDrops(c, p, now); len(drops) > 0 {
				if err := l.dropEntries(ctx, t, int32(pi), drops); err != nil {
					return st, err
				}
				st.EntriesDropped += len(drops)
			}
			if c.Compact {
				if err := l.compact(ctx, t, c, int32(pi), p, activeID, now, &st); err != nil {
					return st, err
				}
			}
		}
	}
	return st, l.deleteUnreferencedSegments(ctx, activeID, &st)
}

func (l *Log) activeSegmentID() uint32 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var id uint32
	for sid := range l.segs {
		id = max(id, sid)
	}
	return id
}

// retentionDrops returns the index entries past the topic's age or size
// limit. Each entry expires by its own newest append time, so an entry
// appended while the clock was ahead keeps only itself. Size retention
// drops the oldest first. An entry still inside the dedup window is kept
// whatever the limits say: a retry of one of its IDs must still find it
// after a restart (the window is rebuilt from the index).
func retentionDrops(c TopicConfig, p *partition, now int64) []indexEntry {
	if c.RetentionAge <= 0 && c.RetentionBytes <= 0 {
		return nil
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	cutoff := now - int64(c.RetentionAge)
	bytes := p.bytes
	var drops []indexEntry
	for _, e := range p.entries {
		// Age is the time since the append, not the messages' own time
		// (an outbox relay appends messages created hours ago: they must
		// still stay RetentionAge in the log).
		expired := c.RetentionAge > 0 && e.appended < cutoff
		oversize := c.RetentionBytes > 0 && bytes > c.RetentionBytes
		if !expired && !oversize {
			if c.RetentionAge <= 0 {
				break // size alone: only a prefix goes
			}
			continue
		}
		if c.inDedupWindow(e, now) {
			continue
		}
		bytes -= int64(e.size)
		drops = append(drops, e)
	}
	return drops
}

// inDedupWindow reports whether e holds records appended inside the
// topic's dedup window: the cleaner leaves such entries alone.
func (c TopicConfig) inDedupWindow(e indexEntry, now int64) bool {
	return c.DedupWindow > 0 && c.DedupMaxIDs > 0 && e.appended >= now-int64(c.DedupWindow)
}

// maxDropSections bounds the sections of one drop batch.
const maxDropSections = 1024

// dropEntries has the writer log that the records of entries are gone,
// as a relocated batch with an empty section spanning each entry: applying
// it removes the entries, at runtime and when recovery replays it, so both
// build the same index.
func (l *Log) dropEntries(ctx context.Context, t *topic, part int32, entries []indexEntry) error {
	for len(entries) > 0 {
		n := min(len(entries), maxDropSections)
		now := l.cfg.now().UnixNano()
		buf := make([]byte, batchHeaderSize, batchHeaderSize+n*sectionHeaderSize)
		for _, e := range entries[:n] {
			at := len(buf)
			buf = append(buf, make([]byte, sectionHeaderSize)...)
			putSectionHeader(buf[at:], sectionHeader{topic: t.id, partition: uint32(part), first: e.first, last: e.last})
		}
		putBatchHeader(buf, flagRelocated, n, now)
		if err := l.submit(ctx, &request{reloc: buf}); err != nil {
			return err
		}
		entries = entries[n:]
	}
	return nil
}

// compact keeps only the latest record of each key (and drops tombstones
// appended longer ago than TombstoneRetention) in the batches of sealed
// segments.
func (l *Log) compact(ctx context.Context, t *topic, c TopicConfig, part int32, p *partition, activeID uint32, now int64, st *CleanStats) error {
	p.mu.RLock()
	entries := append([]indexEntry(nil), p.entries...)
	p.mu.RUnlock()
	// Latest offset of every key across the whole partition.
	latest := map[string]uint64{}
	for _, e := range entries {
		if err := l.readEntry(t, part, e, func(m *ferry.Message) bool {
			latest[string(m.Key)] = m.Offset
			return true
		}); err != nil {
			return err
		}
	}
	tombCutoff := now - int64(c.TombstoneRetention)
	var drops []indexEntry
	for _, e := range entries {
		if e.seg >= activeID {
			break // only sealed segments are compacted
		}
		if c.inDedupWindow(e, now) {
			continue // a retry of its IDs must still find them after a restart
		}
		var live []*ferry.Message
		dead := 0
		if err := l.readEntry(t, part, e, func(m *ferry.Message) bool {
			switch {
			case latest[string(m.Key)] != m.Offset:
				dead++
				st.RecordsCompacted++
			case m.IsTombstone() && e.appended < tombCutoff: // counted from the append, like retention
				dead++
				st.TombstonesExpired++
			default:
				c := *m
				live = append(live, &c)
			}
			return true
		}); err != nil {
			return err
		}
		if dead == 0 {
			continue
		}
		if len(live) == 0 {
			drops = append(drops, e)
			continue
		}
		if err := l.relocate(ctx, t, part, e, live); err != nil {
			return err
		}
		st.RecordsRelocated += len(live)
	}
	if err := l.dropEntries(ctx, t, part, drops); err != nil {
		return err
	}
	st.EntriesDropped += len(drops)
	return nil
}

// relocate writes the live records of entry e as one relocated batch whose
// section spans e's offsets, so that applying it replaces e in the index
// (and recovery, replaying it, does the same).
func (l *Log) relocate(ctx context.Context, t *topic, part int32, e indexEntry, live []*ferry.Message) error {
	now := l.cfg.now().UnixNano()
	buf := make([]byte, batchHeaderSize, batchHeaderSize+sectionHeaderSize+4096)
	start := len(buf)
	buf = append(buf, make([]byte, sectionHeaderSize)...)
	maxTime := live[0].Time.UnixNano()
	for _, m := range live[1:] {
		maxTime = max(maxTime, m.Time.UnixNano())
	}
	for _, m := range live {
		buf = appendRecord(buf, m, m.Offset-e.first, maxTime)
	}
	putSectionHeader(buf[start:], sectionHeader{topic: t.id, partition: uint32(part), first: e.first, last: e.last,
		count: uint32(len(live)), bodyLen: uint32(len(buf) - start - sectionHeaderSize), maxTime: maxTime})
	putBatchHeader(buf, flagRelocated, 1, now)
	return l.submit(ctx, &request{reloc: buf})
}

// deleteUnreferencedSegments removes sealed segments that no index entry
// points into, after a durable checkpoint that no longer needs them.
func (l *Log) deleteUnreferencedSegments(ctx context.Context, activeID uint32, st *CleanStats) error {
	used := map[uint32]bool{}
	l.mu.RLock()
	for _, t := range l.topics {
		for _, p := range t.parts {
			p.mu.RLock()
			for _, e := range p.entries {
				used[e.seg] = true
			}
			p.mu.RUnlock()
		}
	}
	var victims []*segment
	for id, s := range l.segs {
		if id < activeID && !used[id] {
			victims = append(victims, s)
		}
	}
	l.mu.RUnlock()
	if len(victims) == 0 {
		return nil
	}
	if err := l.submit(ctx, &request{checkpoint: true}); err != nil {
		return fmt.Errorf("commitlog: checkpoint before deleting segments: %w", err)
	}
	for _, s := range victims {
		var size int64
		if fi, err := l.cfg.fs.Stat(s.path); err == nil {
			size = fi.Size()
		}
		l.mu.Lock()
		delete(l.segs, s.id)
		l.mu.Unlock()
		s.remove()
		if err := l.cfg.fs.Remove(s.path); err != nil {
			return fmt.Errorf("commitlog: remove segment %s: %w", s.path, err)
		}
		st.SegmentsDeleted++
		st.BytesReclaimed += size
	}
	if err := l.cfg.fs.SyncDir(filepath.Join(l.dir, walDir)); err != nil {
		return fmt.Errorf("commitlog: fsync %s after deleting segments: %w", walDir, err)
	}
	l.cfg.logger.Info("cleaner deleted segments", "count", st.SegmentsDeleted, "bytes", st.BytesReclaimed)
	return nil
}

// runCleaner runs Clean every clean interval until the log closes.
func (l *Log) runCleaner() {
	defer close(l.cleanerDone)
	t := time.NewTicker(l.cfg.cleanInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithCancel(context.Background())
			go func() {
				select {
				case <-l.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			if _, err := l.Clean(ctx); err != nil {
				l.cfg.logger.Warn("cleaner run failed", "err", err)
			}
			cancel()
		}
	}
}
