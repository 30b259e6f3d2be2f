package commitlog

import (
	"sort"
	"sync"
	"time"
)

// indexEntry locates records of one partition. Either it is a run of
// batches that hold only this partition (consecutive ones lying back to
// back in a segment share one entry, so a single-producer stream costs one
// entry per maxEntrySpan bytes rather than one per batch), or, when a
// batch holds several partitions, it is this partition's section alone
// (section true): a reader then reads and verifies just those bytes.
type indexEntry struct {
	first, last uint64 // offsets covered (records may be sparse inside)
	maxTime     int64  // max record time of this and every earlier entry (OffsetForTime searches it)
	appended    int64  // max append time (batch header) of this entry's own batches
	oldest      int64  // min append time of its batches (merging keeps appended-oldest within maxEntryAge)
	seg         uint32 // segment ID
	pos         uint32 // byte position of the first batch in the segment
	size        uint32 // bytes from pos to the end of the last batch
	count       uint32 // records of this partition in the run
	section     bool   // pos and size delimit one section, not whole batches
}

const maxEntrySpan = 256 << 10

// maxEntryAge bounds how much later than an entry's newest batch a batch
// may be appended and still join it. An entry expires by its newest
// append time; bounding the age spread of one entry keeps its older
// records from outliving their retention by more than this (and a batch
// appended while the clock was far ahead, or after it stepped back, starts
// an entry of its own, so it pins nothing but itself).
const maxEntryAge = int64(time.Second)

// partition is one partition's index and tail.
//
// Lock order: Log.mu before partition.mu. Fields marked "writer" are only
// touched by the writer goroutine (or by Open before it starts).
type partition struct {
	mu      sync.RWMutex
	entries []indexEntry // sorted by first, non-overlapping
	start   uint64       // first retained offset
	end     uint64       // one past the last readable offset (high watermark)
	bytes   int64        // bytes of the batches in entries (for size retention)
	changed chan struct{}

	next uint64 // writer: next offset to assign

	// What changed since the last checkpoint (see checkpointPartition):
	// the checkpoint's entries are now entries[:ckKeep] after ckCut of
	// them were dropped from the front. Kept by the apply methods below.
	ckCut, ckKeep int
}

func newPartition() *partition { return &partition{changed: make(chan struct{})} }

// addLocked records a batch (or a batch relocated by the cleaner) holding
// records [first, last] of this partition.
//
// Runtime and recovery apply the same batches in the same order through
// here, so the index is a function of the log: whatever the cleaner drops
// is dropped by a batch of its own (see dropRangeLocked), never in memory
// alone.
func (p *partition) addLocked(e indexEntry, relocated bool) {
	if relocated {
		p.replaceLocked(e)
		return
	}
	if n := len(p.entries); n > 0 {
		prev := &p.entries[n-1]
		e.maxTime = max(e.maxTime, prev.maxTime)
		if !prev.section && !e.section && prev.seg == e.seg && prev.pos+prev.size == e.pos && prev.size+e.size <= maxEntrySpan && prev.last < e.first &&
			e.appended >= prev.appended && e.appended-prev.oldest <= maxEntryAge {
			prev.last, prev.size, prev.count, prev.maxTime, prev.appended = e.last, prev.size+e.size, prev.count+e.count, e.maxTime, e.appended
			p.ckKeep = min(p.ckKeep, n-1)
			p.bytes += int64(e.size)
			p.advanceLocked(e.last + 1)
			return
		}
	}
	p.entries = append(p.entries, e)
	p.bytes += int64(e.size)
	p.advanceLocked(e.last + 1)
}

// replaceLocked swaps the entries lying inside [e.first, e.last] for e.
// The records keep the append time of the entries they came from (the
// relocating batch's own header carries the cleaner's time, which it keeps
// only if it replaces nothing).
func (p *partition) replaceLocked(e indexEntry) {
	i := sort.Search(len(p.entries), func(i int) bool { return p.entries[i].first >= e.first })
	j := i
	var appended int64
	oldest := e.oldest
	for j < len(p.entries) && p.entries[j].last <= e.last {
		p.bytes -= int64(p.entries[j].size)
		appended = max(appended, p.entries[j].appended)
		oldest = min(oldest, p.entries[j].oldest)
		j++
	}
	if j > i {
		e.appended, e.oldest = appended, oldest
	}
	if i > 0 {
		e.maxTime = max(e.maxTime, p.entries[i-1].maxTime)
	}
	p.ckKeep = min(p.ckKeep, i)
	p.entries = append(p.entries[:i], append([]indexEntry{e}, p.entries[j:]...)...)
	p.bytes += int64(e.size)
	p.advanceLocked(e.last + 1)
}

// dropRangeLocked removes the entries lying inside [first, last]: the
// cleaner's record that their records expired or were compacted away. If
// they were the partition's first entries, its start moves past them.
func (p *partition) dropRangeLocked(first, last uint64) int {
	i := sort.Search(len(p.entries), func(i int) bool { return p.entries[i].first >= first })
	j := i
	for j < len(p.entries) && p.entries[j].last <= last {
		p.bytes -= int64(p.entries[j].size)
		j++
	}
	if j == i {
		return 0
	}
	if i == 0 {
		gone := min(j, p.ckKeep) // of the checkpoint's entries
		p.ckCut, p.ckKeep = p.ckCut+gone, p.ckKeep-gone
	} else {
		p.ckKeep = min(p.ckKeep, i)
	}
	p.entries = append(p.entries[:i], p.entries[j:]...)
	if i == 0 {
		if len(p.entries) > 0 {
			p.start = max(p.start, p.entries[0].first)
		} else {
			p.start = max(p.start, p.end)
		}
	}
	// Readers waiting at an offset that is gone must look again.
	close(p.changed)
	p.changed = make(chan struct{})
	return j - i
}

func (p *partition) advanceLocked(end uint64) {
	if end > p.end {
		p.end = end
	}
	if end > p.next {
		p.next = end
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// find returns the index of the first entry that holds offsets >= off.
func (p *partition) findLocked(off uint64) int {
	return sort.Search(len(p.entries), func(i int) bool { return p.entries[i].last >= off })
}

type topic struct {
	id     uint32
	name   string
	config TopicConfig
	parts  []*partition
	dedup  *dedupWindow // writer
	rr     uint32       // writer: round-robin cursor for keyless messages
}

func newTopic(id uint32, name string, c TopicConfig) *topic {
	t := &topic{id: id, name: name, config: c, parts: make([]*partition, c.Partitions)}
	for i := range t.parts {
		t.parts[i] = newPartition()
	}
	if c.DedupWindow > 0 && c.DedupMaxIDs > 0 {
		t.dedup = newDedupWindow(c.DedupWindow, c.DedupMaxIDs)
	}
	return t
}

// groupKey names one partition's committed offset within a consumer group.
type groupKey struct {
	topic     uint32
	partition uint32
}
