package commitlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"github.com/ferrymq/ferry"
)

// recover rebuilds the in-memory state: newest valid checkpoint, then the
// log after it.
func (l *Log) recover(ctx context.Context) error {
	ids, err := l.listSegments()
	if err != nil {
		return err
	}
	ck, ckName := l.loadCheckpoint(ids)
	startSeg, startPos := uint32(0), uint64(0)
	if ck != nil {
		l.applyCheckpoint(ck)
		startSeg, startPos = ck.seg, ck.pos
		l.recovery.Checkpoint = ckName
	} else if len(ids) > 0 && ids[0] != 0 {
		return fmt.Errorf("commitlog: %s: segments before %s were deleted by the cleaner but no valid checkpoint remains to describe them: %w", l.dir, segName(ids[0]), ferry.ErrCorrupt)
	}
	// The log after the checkpoint is replayed whole: a missing segment
	// there means lost state (topics, offsets, messages), never a segment
	// the cleaner deleted (it deletes only what a checkpoint at or after
	// the active segment no longer needs).
	want := startSeg
	for _, id := range ids {
		if id < startSeg {
			continue
		}
		if id != want {
			from := "the start of the log"
			if ck != nil {
				from = "checkpoint " + ckName
			}
			return fmt.Errorf("commitlog: %s: segment %s is missing (found %s; the log is replayed from %s): %w", l.dir, segName(want), segName(id), from, ferry.ErrCorrupt)
		}
		want++
	}
	for i, id := range ids {
		if id < startSeg {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		seg := l.newSegment(id)
		l.segs[id] = seg
		from := int64(0)
		if id == startSeg {
			from = int64(startPos)
		}
		last := i == len(ids)-1
		if err := l.scanSegment(seg, from, last); err != nil {
			if !l.cfg.repair || !errors.Is(err, ferry.ErrCorrupt) {
				return err
			}
			if err := l.repairAfter(seg, ids[i+1:], err); err != nil {
				return err
			}
			break
		}
		if !l.cfg.readOnly {
			if err := l.syncReplayed(seg); err != nil {
				return err
			}
		}
		l.evictSegments()
	}
	// Segments wholly before the checkpoint are opened when read.
	for _, id := range ids {
		if id < startSeg && l.segs[id] == nil {
			l.segs[id] = l.newSegment(id)
		}
	}
	if l.cfg.readOnly {
		return l.rebuildDedup()
	}
	if err := l.cfg.fs.SyncDir(filepath.Join(l.dir, walDir)); err != nil {
		return fmt.Errorf("commitlog: fsync %s after replaying it: %w", walDir, err)
	}
	l.removeTemporaries()
	if err := l.rebuildDedup(); err != nil {
		return err
	}
	return l.openActive(ids, startSeg)
}

// syncReplayed makes durable what recovery replayed of seg (after the
// checkpoint). Recovery reads what the OS has, which after a crash of the
// process (not of the machine), or after an fsync that failed, includes
// bytes that were written but never synced. The log is about to serve
// them: reads, and dedup hits that acknowledge a retry as a duplicate
// without writing it again. Neither may rest on bytes a power loss would
// take back. (recover then fsyncs the wal directory.)
func (l *Log) syncReplayed(seg *segment) error {
	f, err := seg.file()
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("commitlog: fsync %s after replaying it: %w", seg.path, err)
	}
	return nil
}

// openActive positions the writer at the end of the last segment, creating
// the first one if the log is empty.
func (l *Log) openActive(ids []uint32, minID uint32) error {
	if len(ids) > 0 && ids[len(ids)-1] >= minID {
		if s := l.segs[ids[len(ids)-1]]; s != nil {
			s.pin(true)
			f, err := s.file()
			if err != nil {
				return err
			}
			size, err := f.Size()
			if err != nil {
				return fmt.Errorf("commitlog: size of %s: %w", s.path, err)
			}
			if _, err := f.Seek(size, io.SeekStart); err != nil {
				return fmt.Errorf("commitlog: seek %s: %w", s.path, err)
			}
			l.active, l.activeSize, l.zeroedTo = s, size, 0
			return nil
		}
	}
	id := minID
	if len(ids) > 0 && ids[len(ids)-1]+1 > id {
		id = ids[len(ids)-1] + 1
	}
	return l.createSegment(id)
}

func (l *Log) createSegment(id uint32) error {
	path := l.segPath(id)
	f, err := l.cfg.fs.Create(path)
	if err != nil {
		return fmt.Errorf("commitlog: create segment %s: %w", path, err)
	}
	// The new file's directory entry must be durable before any batch in it
	// is acknowledged.
	if err := l.cfg.fs.SyncDir(filepath.Join(l.dir, walDir)); err != nil {
		f.Close()
		return fmt.Errorf("commitlog: fsync %s after creating %s: %w", walDir, segName(id), err)
	}
	s := l.newSegment(id)
	s.f, s.pinned = f, true
	l.openSegs.Add(1)
	l.mu.Lock()
	l.segs[id] = s
	l.mu.Unlock()
	if l.active != nil {
		l.active.pin(false)
	}
	l.active, l.activeSize, l.zeroedTo = s, 0, 0
	if int(l.openSegs.Load()) > l.cfg.maxOpenSegments {
		l.evictSegments()
	}
	return nil
}

// scanSegment replays the batches of seg from position from. A batch that
// is incomplete or fails its checksum at the end of the last segment is a
// torn write (never acknowledged) and is cut off; anywhere else it is
// corruption.
func (l *Log) scanSegment(seg *segment, from int64, last bool) error {
	f, err := seg.file()
	if err != nil {
		return err
	}
	size, err := f.Size()
	if err != nil {
		return fmt.Errorf("commitlog: size of %s: %w", seg.path, err)
	}
	l.recovery.SegmentsScanned++
	r := newBatchReader(f, from, size)
	for {
		pos := r.pos
		b, err := r.next()
		if err == io.EOF {
			return nil
		}
		if err == nil {
			var h batchHeader
			if h, err = decodeBatchHeader(b); err == nil {
				if err = l.applyBatch(seg.id, uint32(pos), h, b); err == nil {
					l.recovery.BytesScanned += int64(len(b))
					continue
				}
			}
		}
		if errors.Is(err, errTorn) || errors.Is(err, ferry.ErrCorrupt) {
			if last {
				// What follows the bad batch, read once.
				tail := make([]byte, size-pos)
				n, _ := f.ReadAt(tail, pos)
				tail = tail[:n]
				if l.isTornTail(tail) {
					return l.truncateTorn(seg, pos, size, trailingZeros(tail, size-pos))
				}
			}
			return &CorruptionError{File: seg.path, Offset: pos, Err: err}
		}
		return fmt.Errorf("commitlog: read %s at %d: %w", seg.path, pos, err)
	}
}

// CorruptionError reports damage in the middle of the log: the file, the
// byte offset of the bad batch, and what was wrong. It matches
// ferry.ErrCorrupt with errors.Is.
type CorruptionError struct {
	File   string
	Offset int64
	Err    error
}

// Error says where the damage is and how to proceed.
func (e *CorruptionError) Error() string {
	return fmt.Sprintf("commitlog: corrupt batch in %s at offset %d: %v (open with repair to truncate the log there)", e.File, e.Offset, e.Err)
}

// Unwrap lets errors.Is match ferry.ErrCorrupt.
func (e *CorruptionError) Unwrap() []error { return []error{ferry.ErrCorrupt, e.Err} }

// truncateTorn cuts the last segment at pos: what follows is an
// unacknowledged batch (TornBytes) and zeros, the last zeros of it
// (ZeroTailBytes, see zeroAhead).
func (l *Log) truncateTorn(seg *segment, pos, size, zeros int64) error {
	torn := size - pos - zeros
	l.recovery.ZeroTailBytes = zeros
	if torn > 0 {
		l.recovery.TornFile, l.recovery.TornBytes = seg.path, torn
		what := "truncating torn tail (an unacknowledged append)"
		if l.cfg.durability != DurabilityAlways {
			what = "truncating the tail after the last fsync (durability " + l.cfg.durability.String() + " may lose it)"
		}
		l.cfg.logger.Warn(what, "file", seg.path, "offset", pos, "bytes", torn, "zeros after it", l.recovery.ZeroTailBytes)
	} else {
		l.cfg.logger.Info("truncating zeros after the last batch", "file", seg.path, "offset", pos, "bytes", l.recovery.ZeroTailBytes)
	}
	if l.cfg.readOnly {
		return nil
	}
	f, err := seg.file()
	if err != nil {
		return err
	}
	if err := f.Truncate(pos); err != nil {
		return fmt.Errorf("commitlog: truncate torn tail of %s at %d: %w", seg.path, pos, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("commitlog: fsync %s after truncating: %w", seg.path, err)
	}
	return nil
}

// repairAfter cuts the log at the corrupt batch: truncates seg there and
// deletes every later segment, reporting what was cut.
func (l *Log) repairAfter(seg *segment, later []uint32, cause error) error {
	var ce *CorruptionError
	if !errors.As(cause, &ce) {
		return cause
	}
	f, err := seg.file()
	if err != nil {
		return err
	}
	size, _ := f.Size()
	l.recovery.Repaired = append(l.recovery.Repaired, fmt.Sprintf("%s: cut %d bytes from offset %d (%v)", seg.path, size-ce.Offset, ce.Offset, ce.Err))
	if l.cfg.readOnly {
		return nil
	}
	if err := f.Truncate(ce.Offset); err != nil {
		return fmt.Errorf("commitlog: repair: truncate %s: %w", seg.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("commitlog: repair: fsync %s: %w", seg.path, err)
	}
	for _, id := range later {
		p := l.segPath(id)
		if s := l.segs[id]; s != nil {
			delete(l.segs, id)
			s.remove()
		}
		if err := l.cfg.fs.Remove(p); err != nil {
			return fmt.Errorf("commitlog: repair: remove %s: %w", p, err)
		}
		l.recovery.Repaired = append(l.recovery.Repaired, "removed "+p)
	}
	if err := l.cfg.fs.SyncDir(filepath.Join(l.dir, walDir)); err != nil {
		return fmt.Errorf("commitlog: repair: fsync %s: %w", walDir, err)
	}
	// Checkpoints past the cut describe what is gone. Left there, one
	// would seem to fit again once the log grew back past its position.
	cut := ckFile{seg: seg.id, pos: uint64(ce.Offset)}
	for _, f := range l.listCheckpoints() {
		if cut.before(f) {
			p := filepath.Join(l.dir, checkpointDir, f.name)
			if err := l.cfg.fs.Remove(p); err != nil {
				return fmt.Errorf("commitlog: repair: remove %s: %w", p, err)
			}
			l.recovery.Repaired = append(l.recovery.Repaired, "removed "+p)
		}
	}
	if err := l.cfg.fs.SyncDir(filepath.Join(l.dir, checkpointDir)); err != nil {
		return fmt.Errorf("commitlog: repair: fsync %s: %w", checkpointDir, err)
	}
	l.cfg.logger.Warn("repaired corrupt log", "cut", l.recovery.Repaired)
	return nil
}

// trailingZeros counts the zero bytes at the end of tail, the first n
// bytes of what follows a bad batch of a segment, as far as they could be
// read (what could not be read counts as data: no zeros).
func trailingZeros(tail []byte, n int64) int64 {
	if int64(len(tail)) < n {
		return 0
	}
	i := len(tail)
	for i > 0 && tail[i-1] == 0 {
		i--
	}
	return int64(len(tail) - i)
}

// isTornTail decides whether tail, the rest of the last segment from a bad
// batch on, is the end of the log rather than damage in its middle:
//
//   - Opened read-only, always: the owner may be appending into the
//     region it zeroed ahead while this process reads it, so what follows
//     the end it saw is not to be judged; nothing is cut.
//   - With DurabilityInterval or DurabilityNone, always: everything after
//     the last fsync is the tail these modes may lose, and the disk may
//     have written it back in any order (a later batch kept, an earlier
//     one zeroed).
//   - Otherwise it is torn unless a later write follows it: each group is
//     fsynced before the next is written, right after it, so a later
//     write proves the bad batch was complete once (corruption). Where
//     the bad batch ends is told twice, by its header's length and by its
//     sections' lengths (batchEnds), so that one damaged field cannot hide
//     what follows: a valid batch at either end is a later write. If both
//     ends lie past the end of the segment, the batch is incomplete: the
//     last write, torn; a valid batch inside it is part of its payload (a
//     copy of a segment carried as a message, say), no later write. If an
//     end lies inside the segment and only zeros follow it, it is the last
//     batch, damaged. Anything else — no header to go by, or bytes that are
//     neither zeros nor a batch after its end — is corruption if a chain
//     of valid batches anywhere after its first byte runs to the end of
//     the segment's data (laterWriteIn).
func (l *Log) isTornTail(tail []byte) bool {
	if l.cfg.readOnly || l.cfg.durability != DurabilityAlways {
		return true
	}
	if _, err := peekBatchLength(tail); err == nil {
		ends := batchEnds(tail)
		inside := false
		for _, end := range ends {
			if end <= len(tail) {
				inside = true
				if validBatchAt(tail[end:]) {
					return false
				}
			}
		}
		if !inside {
			return true
		}
		// Only after both ends were tried for a later write: a damaged
		// length can point into a later batch's payload, and payloads hold
		// runs of zeros.
		for _, end := range ends {
			if end <= len(tail) && allZero(tail[end:]) {
				return true
			}
		}
	}
	return !laterWriteIn(tail[min(1, len(tail)):])
}

// batchEnds returns where the batch at the start of b ends according to
// its header's length and according to its sections' lengths (each may
// lie past the end of b).
func batchEnds(b []byte) [2]int {
	le := binary.LittleEndian
	byLength := int(le.Uint32(b[4:]))
	at := batchHeaderSize
	for i := 0; i < int(le.Uint16(b[14:])); i++ {
		if at+sectionHeaderSize > len(b) {
			return [2]int{byLength, len(b) + 1}
		}
		at += sectionHeaderSize + int(le.Uint32(b[at+28:]))
		if at > len(b) {
			break
		}
	}
	return [2]int{byLength, at}
}

// validBatchAt reports whether b starts with a complete, checksummed batch.
func validBatchAt(b []byte) bool {
	n, err := peekBatchLength(b)
	if err != nil || int64(n) > int64(len(b)) {
		return false
	}
	_, err = decodeBatchHeader(b[:n])
	return err == nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// laterWriteIn reports whether b holds a valid batch that starts a chain
// of valid batches running to the end of the written data: the end of b,
// zeros to it (written ahead), or a last write cut short by it (a batch
// whose length runs past the end, or fewer bytes than a header that begin
// like one). That is what the writes after a damaged batch leave; a batch
// carried inside a message's payload is followed by the rest of the
// payload instead.
//
// It costs one pass however the candidates nest: their CRCs come from
// rangeCRCs, and whether each one's chain runs to the end is worked out
// from the last candidate back, each once.
func laterWriteIn(b []byte) bool {
	cands := candidateBatches(b)
	if len(cands) == 0 {
		return false
	}
	lastNonZero := len(b) - 1
	for lastNonZero >= 0 && b[lastNonZero] == 0 {
		lastNonZero--
	}
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], batchMagic)
	// endsData reports whether the data from i on is an end: nothing or
	// zeros, or a last write cut short — the first bytes of a header with
	// only zeros after them, a batch whose length runs past the end, or a
	// damaged batch with only zeros after it.
	endsData := func(i int) bool {
		switch {
		case i > lastNonZero:
			return true
		case lastNonZero < i+batchHeaderSize:
			return bytes.HasPrefix(magic[:], b[i:min(i+4, lastNonZero+1)])
		case binary.LittleEndian.Uint32(b[i:]) != batchMagic:
			return false
		}
		end := i + int(binary.LittleEndian.Uint32(b[i+4:]))
		return end >= i+batchHeaderSize && (end > len(b) || end > lastNonZero)
	}
	reaches := make(map[int]bool, len(cands))
	for k := len(cands) - 1; k >= 0; k-- {
		c := cands[k]
		if !c.valid {
			continue
		}
		end := c.at + c.n
		r := endsData(end)
		if !r {
			r = reaches[end] // a valid batch right after it, whose chain runs on
		}
		reaches[c.at] = r
	}
	for _, c := range cands {
		if c.valid && reaches[c.at] {
			return true
		}
	}
	return false
}

// candidate is a position of b where a batch could start, and whether one
// does (its CRC matches).
type candidate struct {
	at, n int
	valid bool
}

// candidateBatches finds every position where a complete batch could
// start — magic, a length that fits, the version, at least one section —
// and checks all their CRCs in one pass (see rangeCRCs).
func candidateBatches(b []byte) []candidate {
	var cands []candidate
	var spans [][2]int
	for i := 0; i+batchHeaderSize <= len(b); i++ {
		if b[i] != byte(batchMagic&0xff) || binary.LittleEndian.Uint32(b[i:]) != batchMagic {
			continue
		}
		n, err := peekBatchLength(b[i:])
		if err != nil || int64(n) > int64(len(b)-i) || b[i+12] != batchVersion || b[i+14] == 0 && b[i+15] == 0 {
			continue
		}
		cands = append(cands, candidate{at: i, n: int(n)})
		spans = append(spans, [2]int{i + 12, i + int(n)})
	}
	if len(cands) == 0 {
		return nil
	}
	for k, crc := range rangeCRCs(b, spans) {
		cands[k].valid = crc == binary.LittleEndian.Uint32(b[cands[k].at+8:])
	}
	return cands
}

// nextValidBatch returns the position of the first complete, checksummed
// batch in b, or -1. It costs one pass over b however many positions look
// like a header (see candidateBatches).
func nextValidBatch(b []byte) int {
	for _, c := range candidateBatches(b) {
		if c.valid {
			return c.at
		}
	}
	return -1
}

// batchReader reads consecutive batches from a segment through a buffer.
type batchReader struct {
	f interface {
		ReadAt([]byte, int64) (int, error)
	}
	pos  int64
	size int64
	buf  []byte
	bpos int64 // file position of buf[0]
}

func newBatchReader(f interface {
	ReadAt([]byte, int64) (int, error)
}, from, size int64) *batchReader {
	return &batchReader{f: f, pos: from, size: size, bpos: from}
}

// next returns the bytes of the batch at r.pos (not yet checksummed), or
// io.EOF at the clean end of the segment. errTorn means an incomplete batch.
func (r *batchReader) next() ([]byte, error) {
	if r.pos >= r.size {
		return nil, io.EOF
	}
	hdr, err := r.window(r.pos, batchHeaderSize)
	if err != nil {
		return nil, err
	}
	n, err := peekBatchLength(hdr)
	if err != nil {
		return nil, err
	}
	b, err := r.window(r.pos, int(n))
	if err != nil {
		return nil, err
	}
	r.pos += int64(n)
	return b, nil
}

// window returns n bytes at file position off, refilling the buffer.
func (r *batchReader) window(off int64, n int) ([]byte, error) {
	if off+int64(n) > r.size {
		return nil, errTorn
	}
	if off < r.bpos || off+int64(n) > r.bpos+int64(len(r.buf)) {
		want := max(n, 1<<20)
		want = int(min(int64(want), r.size-off))
		if cap(r.buf) < want {
			r.buf = make([]byte, want)
		}
		r.buf = r.buf[:want]
		m, err := r.f.ReadAt(r.buf, off)
		if m < n {
			if err == nil || err == io.EOF {
				err = errTorn
			}
			return nil, err
		}
		r.buf, r.bpos = r.buf[:m], off
	}
	return r.buf[off-r.bpos : off-r.bpos+int64(n)], nil
}

// applyBatch makes a batch's effects visible: index entries for message
// sections, state changes for control records. Recovery calls it for every
// batch it replays and the writer for every batch it has made durable, so
// both build the same state. Callers hold no locks.
func (l *Log) applyBatch(seg, pos uint32, h batchHeader, b []byte) error {
	relocated := h.flags&flagRelocated != 0
	return forEachSection(b, h, func(sh sectionHeader, body []byte, at int) error {
		if sh.topic == controlTopicID {
			return l.applyControlSection(sh, body)
		}
		l.mu.RLock()
		t := l.byID[sh.topic]
		nextID := l.nextTopicID
		l.mu.RUnlock()
		if t == nil {
			if sh.topic < nextID {
				return nil // a deleted topic
			}
			return fmt.Errorf("%w: section for unknown topic ID %d", ferry.ErrCorrupt, sh.topic)
		}
		if int(sh.partition) >= len(t.parts) {
			return fmt.Errorf("%w: section for partition %d of topic %q, which has %d", ferry.ErrCorrupt, sh.partition, t.name, len(t.parts))
		}
		if sh.count == 0 {
			if relocated {
				// The cleaner dropped these offsets (see dropEntries).
				p := t.parts[sh.partition]
				p.mu.Lock()
				p.dropRangeLocked(sh.first, sh.last)
				p.mu.Unlock()
			}
			return nil
		}
		e := indexEntry{first: sh.first, last: sh.last, maxTime: sh.maxTime, appended: h.appendTime, oldest: h.appendTime, seg: seg, pos: pos, size: uint32(len(b)), count: sh.count}
		if h.sections > 1 {
			// The batch is shared: point at this partition's section only.
			e.pos, e.size, e.section = pos+uint32(at), sectionHeaderSize+sh.bodyLen, true
		}
		p := t.parts[sh.partition]
		p.mu.Lock()
		p.addLocked(e, relocated)
		p.mu.Unlock()
		return nil
	})
}

func (l *Log) applyControlSection(sh sectionHeader, body []byte) error {
	d := newRecordDecoder(sh, body)
	var m ferry.Message
	for {
		ok, err := d.next(&m)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		op, err := decodeControl(m.Payload)
		if err != nil {
			return err
		}
		if err := l.applyControl(op); err != nil {
			return err
		}
	}
}

func (l *Log) applyControl(op controlOp) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch op.op {
	case opCreateTopic:
		if op.topicID == controlTopicID || op.topicID < l.nextTopicID || l.topics[op.name] != nil {
			return fmt.Errorf("%w: topic %q created twice or with reused ID %d", ferry.ErrCorrupt, op.name, op.topicID)
		}
		t := newTopic(op.topicID, op.name, op.config)
		l.topics[op.name], l.byID[op.topicID] = t, t
		l.nextTopicID = op.topicID + 1
	case opDeleteTopic:
		t := l.byID[op.topicID]
		if t == nil {
			return nil
		}
		delete(l.topics, t.name)
		delete(l.byID, t.id)
		for _, offs := range l.groups {
			for k := range offs {
				if k.topic == t.id {
					delete(offs, k)
				}
			}
		}
		for _, p := range t.parts {
			p.mu.Lock()
			p.entries = nil
			close(p.changed) // wake readers; they will find the topic gone
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
	case opCommitOffset:
		if l.byID[op.topicID] == nil {
			return nil // committed for a topic deleted since
		}
		offs := l.groups[op.group]
		if offs == nil {
			offs = map[groupKey]uint64{}
			l.groups[op.group] = offs
		}
		k := groupKey{op.topicID, op.partition}
		offs[k] = op.offset
		l.offsetChangedLocked(op.group, k)
	case opAlterTopic:
		t := l.byID[op.topicID]
		if t == nil {
			return nil // altered, then deleted
		}
		if op.config.Partitions != len(t.parts) || op.config.Compact != t.config.Compact ||
			op.config.DedupWindow != t.config.DedupWindow || op.config.DedupMaxIDs != t.config.DedupMaxIDs {
			return fmt.Errorf("%w: topic %q altered to %+v, from %+v: only retention changes", ferry.ErrCorrupt, t.name, op.config, t.config)
		}
		t.config = op.config
	case opDeleteOffsets:
		for k, v := range l.groups[op.group] {
			if v != deletedOffset && (op.topicID == 0 || k.topic == op.topicID) && (op.partition == allPartitions || k.partition == op.partition) {
				l.groups[op.group][k] = deletedOffset
				l.offsetChangedLocked(op.group, k)
			}
		}
	}
	return nil
}

// offsetChangedLocked notes that a group's offset changed since the last
// checkpoint (for the next delta). The caller holds l.mu.
func (l *Log) offsetChangedLocked(group string, k groupKey) {
	if l.ckOffsets[group] == nil {
		l.ckOffsets[group] = map[groupKey]bool{}
	}
	l.ckOffsets[group][k] = true
}

// rebuildDedup refills each topic's deduplication window from the most
// recent batches that may still hold IDs inside it: per topic, the newest
// index entries (by time) up to DedupMaxIDs records. Batches are shared by
// partitions, so each is read once, whatever number of entries point at it.
func (l *Log) rebuildDedup() error {
	now := l.cfg.now().UnixNano()
	type span struct {
		seg, pos, size uint32
		section        bool
	}
	// Each span maps to its append time: IDs age by when they were
	// appended, not by the time a message carries (which its producer may
	// have set long before, as an outbox relay does). A run of batches
	// takes the time of its newest, which remembers its older IDs a little
	// longer, never shorter.
	spans := map[span]int64{}
	cutoffs := map[uint32]int64{}
	for _, t := range l.topics {
		if t.dedup == nil {
			continue
		}
		cutoff := now - int64(t.config.DedupWindow)
		cutoffs[t.id] = cutoff
		var cands []indexEntry
		for _, p := range t.parts {
			p.mu.RLock()
			n := 0
			// Not only the newest entries: after the clock stepped back,
			// an entry appended at a later time may lie before older ones.
			for i := len(p.entries) - 1; i >= 0 && n < t.config.DedupMaxIDs; i-- {
				if p.entries[i].appended >= cutoff {
					cands = append(cands, p.entries[i])
					n += int(p.entries[i].count)
				}
			}
			p.mu.RUnlock()
		}
		// Newest first; the sections of one group commit share its time,
		// so the later in the log goes first, as at runtime, where the
		// window holds at least the last DedupMaxIDs appended.
		sort.Slice(cands, func(i, j int) bool {
			a, b := cands[i], cands[j]
			if a.appended != b.appended {
				return a.appended > b.appended
			}
			return a.seg > b.seg || a.seg == b.seg && a.pos > b.pos
		})
		budget := t.config.DedupMaxIDs
		for _, e := range cands {
			if budget <= 0 {
				break
			}
			spans[span{e.seg, e.pos, e.size, e.section}] = e.appended
			budget -= int(e.count)
		}
	}
	if len(spans) == 0 {
		return nil
	}
	ordered := make([]span, 0, len(spans))
	for s := range spans {
		ordered = append(ordered, s)
	}
	sort.Slice(ordered, func(i, j int) bool {
		return ordered[i].seg < ordered[j].seg || ordered[i].seg == ordered[j].seg && ordered[i].pos < ordered[j].pos
	})
	// Log order is append order, so inserting in it keeps each window's
	// FIFO eviction oldest-first.
	for _, s := range ordered {
		appended := spans[s]
		err := l.readSpan(indexEntry{seg: s.seg, pos: s.pos, size: s.size, section: s.section},
			func(sh sectionHeader) bool { c, ok := cutoffs[sh.topic]; return ok && appended >= c },
			func(sh sectionHeader, m *ferry.Message) bool {
				l.byID[sh.topic].dedup.insert(m.ID, dedupHit{partition: int32(sh.partition), offset: m.Offset}, appended)
				return true
			})
		if err != nil {
			return err
		}
	}
	return nil
}

// checkpointFits reports whether the log on disk reaches the checkpoint's
// position (a checkpoint must never describe data the log lost).
func (l *Log) checkpointFits(ck *checkpoint, ids []uint32) bool {
	// Every segment its index points into must still exist.
	have := make(map[uint32]bool, len(ids))
	for _, id := range ids {
		have[id] = true
	}
	for _, t := range ck.topics {
		for _, p := range t.parts {
			for _, e := range p.entries {
				if !have[e.seg] {
					return false
				}
			}
		}
	}
	for _, id := range ids {
		if id == ck.seg {
			fi, err := l.cfg.fs.Stat(l.segPath(id))
			return err == nil && uint64(fi.Size()) >= ck.pos
		}
	}
	// A checkpoint written at a roll, before the new segment was created.
	return ck.pos == 0 && (len(ids) == 0 || ck.seg > ids[len(ids)-1])
}

func (l *Log) readFile(path string) ([]byte, error) {
	f, err := l.cfg.fs.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	b := make([]byte, size)
	if n, err := f.ReadAt(b, 0); n < len(b) {
		return nil, fmt.Errorf("short read of %s: %w", path, err)
	}
	return b, nil
}

func (l *Log) applyCheckpoint(ck *checkpoint) {
	l.nextTopicID = ck.nextTopicID
	for _, ct := range ck.topics {
		t := newTopic(ct.id, ct.name, ct.config)
		for i, cp := range ct.parts {
			p := t.parts[i]
			p.start, p.next, p.end = cp.start, cp.next, cp.next
			p.entries = cp.entries
			p.ckKeep = len(cp.entries)
			for _, e := range cp.entries {
				p.bytes += int64(e.size)
			}
		}
		l.topics[t.name], l.byID[t.id] = t, t
	}
	l.groups = ck.groups
	l.ckHave, l.ckSeg, l.ckPos = true, ck.seg, ck.pos
}

// snapshot captures the state as a checkpoint at log position (seg, pos):
// with delta, what changed since the chain's newest checkpoint, or else a
// base. Only the writer (or Close after it stopped) calls it, so no batch
// is applied concurrently. markCheckpointed records it once it is durable.
func (l *Log) snapshot(seg uint32, pos uint64, delta bool) *checkpoint {
	l.mu.RLock()
	defer l.mu.RUnlock()
	ck := &checkpoint{seg: seg, pos: pos, nextTopicID: l.nextTopicID, groups: map[string]map[groupKey]uint64{}}
	if delta {
		ck.delta, ck.prevSeg, ck.prevPos = true, l.ckSeg, l.ckPos
	}
	for _, t := range l.topics {
		ct := checkpointTopic{id: t.id, name: t.name, config: t.config}
		for _, p := range t.parts {
			p.mu.RLock()
			cp := checkpointPartition{start: p.start, next: p.end}
			// end, not next: a roll checkpoints in the middle of a group
			// whose offsets are assigned (next) but not yet written.
			from := 0
			if ck.delta {
				cp.cut, cp.keep, from = p.ckCut, p.ckKeep, p.ckKeep
			}
			cp.entries = append([]indexEntry(nil), p.entries[from:]...)
			ct.parts = append(ct.parts, cp)
			p.mu.RUnlock()
		}
		ck.topics = append(ck.topics, ct)
	}
	sort.Slice(ck.topics, func(i, j int) bool { return ck.topics[i].id < ck.topics[j].id })
	for g, offs := range l.groups {
		for k, v := range offs {
			if ck.delta && !l.ckOffsets[g][k] || !ck.delta && v == deletedOffset {
				continue
			}
			if ck.groups[g] == nil {
				ck.groups[g] = map[groupKey]uint64{}
			}
			ck.groups[g][k] = v
		}
	}
	return ck
}

// markCheckpointed makes the checkpoint just written at (seg, pos) the
// one the next delta follows.
func (l *Log) markCheckpointed(seg uint32, pos uint64, base bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if base {
		// Deleted offsets are not in a base: nothing older to hide.
		for g, offs := range l.groups {
			for k, v := range offs {
				if v == deletedOffset {
					delete(offs, k)
				}
			}
			if len(offs) == 0 {
				delete(l.groups, g)
			}
		}
	}
	for _, t := range l.topics {
		for _, p := range t.parts {
			p.mu.Lock()
			p.ckCut, p.ckKeep = 0, len(p.entries)
			p.mu.Unlock()
		}
	}
	clear(l.ckOffsets)
	l.ckHave, l.ckSeg, l.ckPos = true, seg, pos
}

// writeCheckpoint writes and fsyncs a checkpoint of the current state at
// (seg, pos): a delta after the chain's newest checkpoint (see
// checkpoint). The log up to (seg, pos) must already be durable. At the
// position of the newest checkpoint there is nothing to write: every
// change of state is a batch of the log, so none happened since.
func (l *Log) writeCheckpoint(seg uint32, pos uint64) error {
	if l.ckHave && seg == l.ckSeg && pos == l.ckPos {
		return nil
	}
	ck := l.snapshot(seg, pos, l.ckHave && !l.cfg.fullCheckpoints)
	b := encodeCheckpoint(ck)
	name := checkpointName(seg, pos)
	if ck.delta {
		name = deltaName(seg, pos)
	}
	if err := l.replaceFile(filepath.Join(l.dir, checkpointDir, name), b); err != nil {
		return err
	}
	l.markCheckpointed(seg, pos, !ck.delta)
	if ck.delta {
		l.ckDeltas.Add(1)
		if l.ckDeltaBytes.Add(int64(len(b))) > max(l.ckBaseBytes.Load(), minCompactBytes) || l.ckDeltas.Load() >= maxDeltas {
			select {
			case l.ckKick <- struct{}{}:
			default:
			}
		}
	} else {
		l.ckBaseBytes.Store(int64(len(b)))
	}
	return nil
}
