package commitlog

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ferrymq/ferry"
)

// ReadResult is what Read and Fetch return.
type ReadResult struct {
	// Messages in offset order. Their Key, Payload and header values share
	// one buffer per call; they stay valid as long as the caller keeps them.
	Messages []*ferry.Message
	// Next is the offset to read from next.
	Next uint64
	// HighWatermark is one past the last readable offset of the partition.
	HighWatermark uint64
	// WaitUntil is set when reading stopped at a delayed message (see
	// ferry.Message.NotBefore) that is not due yet.
	WaitUntil time.Time
}

// ReadOpts bound one read. Zero values mean the defaults.
type ReadOpts struct {
	MaxMessages int // default 1000
	MaxBytes    int // payload bytes, default 4 MiB; at least one message is returned
	// IncludeDelayed returns delayed messages (ferry.Message.NotBefore)
	// that are not due yet, and what follows them, instead of stopping
	// there: a browse, not a consumer's read.
	IncludeDelayed bool
}

func (o ReadOpts) withDefaults() ReadOpts {
	if o.MaxMessages <= 0 {
		o.MaxMessages = 1000
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 4 << 20
	}
	return o
}

func (l *Log) partition(topicName string, part int32) (*topic, *partition, error) {
	l.mu.RLock()
	t := l.topics[topicName]
	l.mu.RUnlock()
	if t == nil {
		return nil, nil, fmt.Errorf("commitlog: topic %q: %w", topicName, ferry.ErrTopicNotFound)
	}
	if part < 0 || int(part) >= len(t.parts) {
		return nil, nil, fmt.Errorf("commitlog: partition %d of topic %q, which has partitions 0 to %d: %w", part, topicName, len(t.parts)-1, ferry.ErrInvalidArgument)
	}
	return t, t.parts[part], nil
}

// Read returns messages of one partition starting at offset (or the next
// retained offset after it). It never waits; see Fetch. An offset before
// the partition's first retained offset or past its end is an error
// wrapping ferry.ErrOffsetOutOfRange.
func (l *Log) Read(topicName string, part int32, offset uint64, o ReadOpts) (ReadResult, error) {
	t, p, err := l.partition(topicName, part)
	if err != nil {
		return ReadResult{}, err
	}
	return l.read(t, part, p, offset, o.withDefaults())
}

// errSegmentGone: the cleaner deleted a segment between the index lookup
// and the read (its records were relocated or dropped): look again.
var errSegmentGone = errors.New("commitlog: segment removed while reading")

// readAttempts bounds how often a read looks the index up again because
// the cleaner removed what it pointed at.
const readAttempts = 8

func (l *Log) read(t *topic, part int32, p *partition, offset uint64, o ReadOpts) (ReadResult, error) {
	for i := 1; ; i++ {
		res, err := l.readOnce(t, part, p, offset, o)
		if !errors.Is(err, errSegmentGone) {
			return res, err
		}
		if i == readAttempts {
			return res, fmt.Errorf("commitlog: %s/%d at %d: the cleaner kept removing what the index pointed at: %w", t.name, part, offset, ferry.ErrOffsetOutOfRange)
		}
	}
}

func (l *Log) readOnce(t *topic, part int32, p *partition, offset uint64, o ReadOpts) (ReadResult, error) {
	if l.closed.Load() {
		return ReadResult{}, ferry.ErrClosed
	}
	p.mu.RLock()
	start, end := p.start, p.end
	i := p.findLocked(offset)
	var entries []indexEntry
	for j := i; j < len(p.entries) && len(entries) < 64; j++ {
		entries = append(entries, p.entries[j])
	}
	p.mu.RUnlock()
	res := ReadResult{Next: offset, HighWatermark: end}
	if offset < start {
		return res, fmt.Errorf("commitlog: offset %d of %s/%d is before the first retained offset %d: %w", offset, t.name, part, start, ferry.ErrOffsetOutOfRange)
	}
	if offset > end {
		return res, fmt.Errorf("commitlog: offset %d of %s/%d is past the end %d: %w", offset, t.name, part, end, ferry.ErrOffsetOutOfRange)
	}
	now := l.cfg.now()
	bytes := 0
	done := false
	for _, e := range entries {
		err := l.readEntry(t, part, e, func(m *ferry.Message) bool {
			if m.Offset < offset || m.Offset < start || m.Offset < res.Next {
				return true
			}
			if len(res.Messages) >= o.MaxMessages || (len(res.Messages) > 0 && bytes+len(m.Payload) > o.MaxBytes) {
				done = true
				return false
			}
			if !o.IncludeDelayed && !m.NotBefore.IsZero() && m.NotBefore.After(now) {
				res.WaitUntil = m.NotBefore
				done = true
				return false
			}
			c := *m
			res.Messages = append(res.Messages, &c)
			bytes += len(m.Payload)
			res.Next = m.Offset + 1
			return true
		})
		if err != nil {
			return res, err
		}
		if done {
			break
		}
		res.Next = max(res.Next, e.last+1)
	}
	if res.Next > end {
		res.Next = end
	}
	return res, nil
}

// readEntry reads the batches of one index entry and calls fn for each
// record of the partition, until fn returns false. Every batch is
// checksummed before any of it is used.
func (l *Log) readEntry(t *topic, part int32, e indexEntry, fn func(*ferry.Message) bool) error {
	return l.readSpan(e,
		func(sh sectionHeader) bool { return sh.topic == t.id && sh.partition == uint32(part) },
		func(_ sectionHeader, m *ferry.Message) bool {
			m.Topic, m.Partition = t.name, part
			return fn(m)
		})
}

// readSpan reads what e points at — whole batches, or one section — checks
// their CRCs, and calls fn for every record of the sections want accepts,
// until fn returns false. The message passed to fn is reused between calls.
func (l *Log) readSpan(e indexEntry, want func(sectionHeader) bool, fn func(sectionHeader, *ferry.Message) bool) error {
	seg, err := l.acquireSegment(e.seg)
	if err != nil {
		return err
	}
	if seg == nil {
		if l.closed.Load() {
			return ferry.ErrClosed
		}
		return errSegmentGone
	}
	defer seg.release()
	pos := e.pos
	buf := make([]byte, e.size)
	if n, err := seg.f.ReadAt(buf, int64(pos)); n < len(buf) {
		return fmt.Errorf("commitlog: read %s at %d (%d of %d bytes): %w", seg.path, pos, n, len(buf), err)
	}
	var m ferry.Message
	decode := func(sh sectionHeader, body []byte) (stop bool, err error) {
		d := newRecordDecoder(sh, body)
		for {
			ok, err := d.next(&m)
			if err != nil || !ok {
				return false, err
			}
			if !fn(sh, &m) {
				return true, nil
			}
		}
	}
	if e.section {
		sh, err := checkSection(buf)
		if err == nil && want(sh) {
			_, err = decode(sh, buf[sectionHeaderSize:])
		}
		if err != nil {
			return &CorruptionError{File: seg.path, Offset: int64(pos), Err: err}
		}
		return nil
	}
	for at := 0; at < len(buf); {
		n, err := peekBatchLength(buf[at:])
		if err == nil && int(n) > len(buf)-at {
			err = fmt.Errorf("%w: batch overruns its index entry", ferry.ErrCorrupt)
		}
		var h batchHeader
		if err == nil {
			h, err = decodeBatchHeader(buf[at : at+int(n)])
		}
		if err != nil {
			return &CorruptionError{File: seg.path, Offset: int64(pos) + int64(at), Err: err}
		}
		stop := false
		err = forEachSection(buf[at:at+int(n)], h, func(sh sectionHeader, body []byte, _ int) error {
			if stop || !want(sh) {
				return nil
			}
			var err error
			stop, err = decode(sh, body)
			return err
		})
		if err != nil {
			return &CorruptionError{File: seg.path, Offset: int64(pos) + int64(at), Err: err}
		}
		if stop {
			return nil
		}
		at += int(n)
	}
	return nil
}

// Fetch is Read that waits, until ctx is done, for at least one message at
// or after offset (including a delayed message becoming due).
func (l *Log) Fetch(ctx context.Context, topicName string, part int32, offset uint64, o ReadOpts) (ReadResult, error) {
	o = o.withDefaults()
	for {
		if l.closed.Load() {
			return ReadResult{}, ferry.ErrClosed
		}
		t, p, err := l.partition(topicName, part)
		if err != nil {
			return ReadResult{}, err
		}
		p.mu.RLock()
		changed := p.changed
		p.mu.RUnlock()
		res, err := l.read(t, part, p, offset, o)
		if err != nil || len(res.Messages) > 0 {
			return res, err
		}
		if err := l.waitForChange(ctx, changed, res.WaitUntil); err != nil {
			return res, err
		}
	}
}

// waitForChange waits for the partition to change, for a delayed message
// to become due (until, if set), or for ctx.
func (l *Log) waitForChange(ctx context.Context, changed <-chan struct{}, until time.Time) error {
	var due <-chan time.Time
	if !until.IsZero() {
		tm := time.NewTimer(until.Sub(l.cfg.now()))
		defer tm.Stop()
		due = tm.C
	}
	select {
	case <-changed:
	case <-due:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

// Bounds returns a partition's first retained offset and its end (one past
// the last readable offset).
func (l *Log) Bounds(topicName string, part int32) (start, end uint64, err error) {
	_, p, err := l.partition(topicName, part)
	if err != nil {
		return 0, 0, err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.start, p.end, nil
}

// OffsetForTime returns the first offset of the partition whose message
// time is at or after ts, or the partition's end if there is none.
func (l *Log) OffsetForTime(topicName string, part int32, ts time.Time) (uint64, error) {
	t, p, err := l.partition(topicName, part)
	if err != nil {
		return 0, err
	}
	for i := 1; ; i++ {
		off, err := l.offsetForTime(t, part, p, ts)
		if !errors.Is(err, errSegmentGone) {
			return off, err
		}
		if i == readAttempts {
			return 0, fmt.Errorf("commitlog: %s/%d: the cleaner kept removing what the index pointed at: %w", t.name, part, ferry.ErrOffsetOutOfRange)
		}
	}
}

func (l *Log) offsetForTime(t *topic, part int32, p *partition, ts time.Time) (uint64, error) {
	if l.closed.Load() {
		return 0, ferry.ErrClosed
	}
	want := ts.UnixNano()
	p.mu.RLock()
	// maxTime is a running maximum, so it is sorted. After the cleaner
	// removed records it can be higher than what is left before an entry
	// (never lower), so the search lands on or before the entry holding
	// the answer, and the records are read on from there.
	i := sort.Search(len(p.entries), func(i int) bool { return p.entries[i].maxTime >= want })
	end := p.end
	for {
		chunk := append([]indexEntry(nil), p.entries[i:min(i+64, len(p.entries))]...)
		p.mu.RUnlock()
		if len(chunk) == 0 {
			return end, nil
		}
		for _, e := range chunk {
			found, ok := uint64(0), false
			err := l.readEntry(t, part, e, func(m *ferry.Message) bool {
				if m.Time.UnixNano() >= want {
					found, ok = m.Offset, true
					return false
				}
				return true
			})
			if err != nil || ok {
				return min(found, end), err
			}
		}
		p.mu.RLock()
		i = p.findLocked(chunk[len(chunk)-1].last + 1)
	}
}

// TopicInfo describes a topic.
type TopicInfo struct {
	Name       string
	Config     TopicConfig
	Partitions []PartitionInfo
}

// PartitionInfo describes one partition.
type PartitionInfo struct {
	Start, End uint64 // first retained offset, one past the last
	Bytes      int64  // bytes of the log batches holding its records
}

// Topics lists the topics, sorted by name.
func (l *Log) Topics() []TopicInfo {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]TopicInfo, 0, len(l.topics))
	for _, t := range l.topics {
		out = append(out, t.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Topic describes one topic.
func (l *Log) Topic(name string) (TopicInfo, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	t := l.topics[name]
	if t == nil {
		return TopicInfo{}, fmt.Errorf("commitlog: topic %q: %w", name, ferry.ErrTopicNotFound)
	}
	return t.info(), nil
}

// info describes t. The caller holds Log.mu.
func (t *topic) info() TopicInfo {
	ti := TopicInfo{Name: t.name, Config: t.config}
	for _, p := range t.parts {
		p.mu.RLock()
		ti.Partitions = append(ti.Partitions, PartitionInfo{Start: p.start, End: p.end, Bytes: p.bytes})
		p.mu.RUnlock()
	}
	return ti
}

// CommittedOffset returns a group's committed offset for a partition, and
// whether one was committed.
func (l *Log) CommittedOffset(group, topicName string, part int32) (uint64, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	t := l.topics[topicName]
	if t == nil {
		return 0, false
	}
	off, ok := l.groups[group][groupKey{t.id, uint32(part)}]
	if off == deletedOffset {
		return 0, false
	}
	return off, ok
}

// Groups lists every consumer group with committed offsets, with them.
func (l *Log) Groups() map[string][]Offset {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := map[string][]Offset{}
	for g, offs := range l.groups {
		for k, v := range offs {
			if t := l.byID[k.topic]; t != nil && v != deletedOffset {
				out[g] = append(out[g], Offset{Topic: t.name, Partition: int32(k.partition), Offset: v})
			}
		}
		if len(out[g]) == 0 {
			delete(out, g)
			continue
		}
		sort.Slice(out[g], func(i, j int) bool {
			a, b := out[g][i], out[g][j]
			return a.Topic < b.Topic || a.Topic == b.Topic && a.Partition < b.Partition
		})
	}
	return out
}
