package commitlog

import (
	"encoding/binary"
	"math/bits"
	"time"

	"github.com/ferrymq/ferry"
)

// dedupWindow remembers recently appended message IDs of a topic, bounded
// by age and count. It is rebuilt from the log on recovery, so there is no
// separate state to lose. The writer is its only user.
//
// IDs live in two generations: inserts go to the current one; when it
// holds max IDs it becomes the previous one and the previous one is
// dropped whole. So the window remembers at least the last max IDs (at
// most 2×max), and never deletes a single entry. Age is checked per hit,
// and a generation whose newest ID is older than the window is dropped.
//
// Each generation is an open-addressing table of its own (dedupTable):
// a lookup of a new ID reads only a small array of tags, nothing is
// allocated per insert, and a generation is dropped by clearing its tags.
// It replaced a Go map with Bloom filters in front, which cost the writer
// a third of its time at a million appends a second.
type dedupWindow struct {
	window    time.Duration
	max       int
	cur, prev *dedupTable
}

type dedupHit struct {
	partition int32
	offset    uint64
	time      int64
}

func newDedupWindow(window time.Duration, maxIDs int) *dedupWindow {
	return &dedupWindow{window: window, max: maxIDs, cur: newDedupTable(maxIDs), prev: newDedupTable(maxIDs)}
}

// lookup returns the live entry of id: one appended within the window
// before now.
func (w *dedupWindow) lookup(id ferry.ID, now int64) (dedupHit, bool) {
	cutoff := now - int64(w.window)
	if w.prev.n > 0 && w.prev.newest < cutoff {
		w.prev.drop()
	}
	h := idHash(id)
	s, ok := w.cur.find(id, h)
	if !ok {
		s, ok = w.prev.find(id, h)
	}
	if !ok || s.time < cutoff {
		return dedupHit{}, false
	}
	return dedupHit{partition: s.partition, offset: s.offset, time: s.time}, true
}

// insert remembers a write of id at time t. The writer inserts only after
// lookup found no live entry, and recovery inserts in log order, so the
// write inserted last is the one a retry must resolve to: it replaces an
// older entry of the same ID (in the current generation, or shadows one in
// the previous: lookup asks the current first).
func (w *dedupWindow) insert(id ferry.ID, hit dedupHit, t int64) {
	if w.cur.n >= w.max {
		// The dropped generation's table is reused, at the size it grew
		// to: a fresh one of max IDs is megabytes of new memory to fault
		// in, once per max appends.
		w.prev.drop()
		w.prev, w.cur = w.cur, w.prev
	}
	w.cur.put(id, idHash(id), hit.partition, hit.offset, t)
}

// dedupTable is one generation of the window: a linear-probing hash table
// of IDs, with a byte of each slot's hash kept apart (tags). A probe reads
// the tags, a few kilobytes that stay in cache, and touches a slot only
// where its tag matches: an ID the table does not hold, which is almost
// every appended one, costs no cache miss in the slots.
type dedupTable struct {
	slots  []dedupSlot // a power of two long
	tags   []uint8     // of each slot: 0 when free, else tagOf the ID's hash
	limit  int         // the most IDs the table is to hold (the window's max)
	n      int         // slots in use
	newest int64       // time of its newest ID
}

type dedupSlot struct {
	id        ferry.ID
	offset    uint64
	time      int64
	partition int32
}

// tagOf is the byte of h a slot's tag keeps: its top bits (the slot
// number comes from the low ones), never 0.
func tagOf(h uint64) uint8 { return uint8(h>>56) | 1 }

// dedupMinSlots is the size a table starts at; it doubles as it fills, up
// to dedupSlotsFor(limit), and keeps that size through its generations.
const dedupMinSlots = 1 << 10

func newDedupTable(limit int) *dedupTable {
	n := min(dedupMinSlots, dedupSlotsFor(limit))
	return &dedupTable{slots: make([]dedupSlot, n), tags: make([]uint8, n), limit: limit}
}

// dedupSlotsFor is the table size for n IDs: the power of two above
// 8n/7, so a full table is at most seven eighths used and always has a
// free slot, which ends every probe. Probes read tags, which stay in
// cache, so a table this full costs little more to probe than an emptier
// one, and the slots, which do not, take half the memory.
func dedupSlotsFor(n int) int {
	want := n + n/7 + 1
	return 1 << bits.Len(uint(want-1))
}

// find returns id's slot.
func (t *dedupTable) find(id ferry.ID, h uint64) (*dedupSlot, bool) {
	if t.n == 0 {
		return nil, false
	}
	mask, tag := uint64(len(t.slots)-1), tagOf(h)
	for i := h & mask; ; i = (i + 1) & mask {
		switch t.tags[i] {
		case 0:
			return nil, false
		case tag:
			if s := &t.slots[i]; s.id == id {
				return s, true
			}
		}
	}
}

// put records id, replacing an entry of the same ID.
func (t *dedupTable) put(id ferry.ID, h uint64, partition int32, offset uint64, at int64) {
	if t.n >= len(t.slots)*7/8 && len(t.slots) < dedupSlotsFor(t.limit) {
		t.grow()
	}
	mask, tag := uint64(len(t.slots)-1), tagOf(h)
	i := h & mask
	for ; t.tags[i] != 0; i = (i + 1) & mask {
		if t.tags[i] == tag && t.slots[i].id == id {
			break
		}
	}
	if t.tags[i] == 0 {
		t.n++
		t.tags[i] = tag
	}
	t.slots[i] = dedupSlot{id: id, offset: offset, time: at, partition: partition}
	t.newest = max(t.newest, at)
}

// grow doubles the table, moving the entries in use.
func (t *dedupTable) grow() {
	slots, tags := t.slots, t.tags
	t.slots, t.tags, t.n = make([]dedupSlot, 2*len(slots)), make([]uint8, 2*len(tags)), 0
	for i, tag := range tags {
		if tag != 0 {
			s := &slots[i]
			t.put(s.id, idHash(s.id), s.partition, s.offset, s.time)
		}
	}
}

// drop forgets every entry (clearing the tags, a byte a slot).
func (t *dedupTable) drop() {
	t.n, t.newest = 0, 0
	clear(t.tags)
}

// idHash mixes an ID's 16 bytes into 64 bits (IDs need not be random:
// callers may choose their own).
func idHash(id ferry.ID) uint64 {
	h := binary.LittleEndian.Uint64(id[:8])*0x9E3779B97F4A7C15 ^ binary.LittleEndian.Uint64(id[8:])
	h ^= h >> 31
	h *= 0xBF58476D1CE4E5B9
	h ^= h >> 29
	h *= 0x94D049BB133111EB
	return h ^ h>>32
}
