package commitlog

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"sort"

	"github.com/ferrymq/ferry"
)

// A checkpoint is the log's state (topics, partition indexes, consumer
// offsets) as of a position in the log, so that Open scans only the log
// after it. It is a cache: if every checkpoint is unreadable, Open rebuilds
// the state from the segments. The cleaner writes (and fsyncs) one before
// it deletes a segment, because after that the state in the deleted
// segment lives only in the checkpoint.
//
// Checkpoints form a chain: a base holds the whole state, and each delta
// after it only what changed since the checkpoint before it (named by its
// prev position), so that the cost of a checkpoint at a roll is bounded
// by what the segment changed, not by the size of the index. A
// partition's entries in a delta replace the tail of the previous
// checkpoint's: entries = prev.entries[cut:][:keep] + delta.entries (cut
// counts entries the cleaner dropped from the front, keep those that are
// unchanged after them). Its consumer offsets are those committed since.
// Deltas are compacted into a new base in the background (see
// compactCheckpoints).
//
//	0        4    5        9        13
//	+--------+----+--------+--------+---------------------------+
//	| magic  |ver | crc32c | length | payload (length bytes)    |
//	+--------+----+--------+--------+---------------------------+
//	payload (version 3): kind u8 (0 base, 1 delta) | seg u32 | pos u64
//	  | prev seg u32 | prev pos u64 | next topic ID u32
//	  | topics: count, then id u32 | name | config | partitions: count,
//	      then start u64 | next u64 | cut uvarint | keep uvarint | entries: count, then
//	      first u64 | last u64 | maxTime varint | appended varint | oldest varint | seg u32 | pos u32 | size u32 | count u32 | section bool
//	  | groups: count, then name | offsets: count, then topic u32 | partition u32 | offset u64
//	Version 2 is a base without kind, prev, cut, keep and oldest (which
//	it takes from appended); version 1 also lacks appended (its entries
//	take maxTime for it).
const (
	checkpointMagic   = 0x4b595246 // "FRYK"
	checkpointVersion = 3
	checkpointHeader  = 13
)

type checkpoint struct {
	seg         uint32 // the state covers the log up to (seg, pos)
	pos         uint64
	delta       bool   // only what changed since (prevSeg, prevPos)
	prevSeg     uint32 // delta: the position of the checkpoint it follows
	prevPos     uint64
	nextTopicID uint32
	topics      []checkpointTopic
	groups      map[string]map[groupKey]uint64 // delta: the offsets committed since prev
}

type checkpointTopic struct {
	id     uint32
	name   string
	config TopicConfig
	parts  []checkpointPartition
}

type checkpointPartition struct {
	start, next uint64
	cut, keep   int // delta: see the chain above
	entries     []indexEntry
}

func encodeCheckpoint(c *checkpoint) []byte {
	e := encoder{b: make([]byte, checkpointHeader, 4096)}
	e.boolean(c.delta)
	e.u32(c.seg)
	e.u64(c.pos)
	e.u32(c.prevSeg)
	e.u64(c.prevPos)
	e.u32(c.nextTopicID)
	e.uvarint(uint64(len(c.topics)))
	for _, t := range c.topics {
		e.u32(t.id)
		e.str(t.name)
		encodeTopicConfig(&e, t.config)
		e.uvarint(uint64(len(t.parts)))
		for _, p := range t.parts {
			e.u64(p.start)
			e.u64(p.next)
			e.uvarint(uint64(p.cut))
			e.uvarint(uint64(p.keep))
			e.uvarint(uint64(len(p.entries)))
			for _, x := range p.entries {
				e.u64(x.first)
				e.u64(x.last)
				e.varint(x.maxTime)
				e.varint(x.appended)
				e.varint(x.oldest)
				e.u32(x.seg)
				e.u32(x.pos)
				e.u32(x.size)
				e.u32(x.count)
				e.boolean(x.section)
			}
		}
	}
	names := make([]string, 0, len(c.groups))
	for g := range c.groups {
		names = append(names, g)
	}
	sort.Strings(names)
	e.uvarint(uint64(len(names)))
	for _, g := range names {
		e.str(g)
		offs := c.groups[g]
		keys := make([]groupKey, 0, len(offs))
		for k := range offs {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if keys[i].topic != keys[j].topic {
				return keys[i].topic < keys[j].topic
			}
			return keys[i].partition < keys[j].partition
		})
		e.uvarint(uint64(len(keys)))
		for _, k := range keys {
			e.u32(k.topic)
			e.u32(k.partition)
			e.u64(offs[k])
		}
	}
	b := e.b
	le := binary.LittleEndian
	le.PutUint32(b[0:], checkpointMagic)
	b[4] = checkpointVersion
	le.PutUint32(b[9:], uint32(len(b)-checkpointHeader))
	le.PutUint32(b[5:], crc32.Checksum(b[checkpointHeader:], castagnoli))
	return b
}

// decodeCheckpoint parses and verifies a checkpoint file's contents.
func decodeCheckpoint(b []byte) (*checkpoint, error) {
	if len(b) < checkpointHeader {
		return nil, fmt.Errorf("%w: checkpoint of %d bytes is shorter than its header", ferry.ErrCorrupt, len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint32(b[0:]); m != checkpointMagic {
		return nil, fmt.Errorf("%w: bad checkpoint magic %#x", ferry.ErrCorrupt, m)
	}
	version := b[4]
	if version < 1 || version > checkpointVersion {
		return nil, fmt.Errorf("%w: unknown checkpoint version %d", ferry.ErrCorrupt, b[4])
	}
	if n := le.Uint32(b[9:]); uint64(n) != uint64(len(b)-checkpointHeader) {
		return nil, fmt.Errorf("%w: checkpoint length %d, have %d bytes", ferry.ErrCorrupt, n, len(b)-checkpointHeader)
	}
	if want, got := le.Uint32(b[5:]), crc32.Checksum(b[checkpointHeader:], castagnoli); want != got {
		return nil, fmt.Errorf("%w: checkpoint checksum mismatch (stored %#08x, computed %#08x)", ferry.ErrCorrupt, want, got)
	}
	d := decoder{b: b[checkpointHeader:]}
	c := &checkpoint{groups: map[string]map[groupKey]uint64{}}
	if version >= 3 {
		c.delta = d.boolean()
	}
	c.seg = d.u32()
	c.pos = d.u64()
	if version >= 3 {
		c.prevSeg = d.u32()
		c.prevPos = d.u64()
	}
	c.nextTopicID = d.u32()
	nt := d.count(8, "topics")
	seen := map[string]bool{}
	for i := 0; i < nt && d.err == nil; i++ {
		t := checkpointTopic{id: d.u32(), name: d.str()}
		t.config = decodeTopicConfig(&d)
		np := d.count(17, "partitions")
		if d.err == nil && np != t.config.Partitions {
			d.fail(fmt.Sprintf("topic %q has %d partitions, its config says %d", t.name, np, t.config.Partitions))
		}
		if d.err == nil && (seen[t.name] || t.id == controlTopicID || t.id >= c.nextTopicID) {
			d.fail(fmt.Sprintf("topic %q: duplicate name or bad ID %d", t.name, t.id))
		}
		seen[t.name] = true
		for j := 0; j < np && d.err == nil; j++ {
			p := checkpointPartition{start: d.u64(), next: d.u64()}
			if version >= 3 {
				p.cut, p.keep = int(min(d.uvarint(), 1<<40)), int(min(d.uvarint(), 1<<40))
				if d.err == nil && !c.delta && (p.cut != 0 || p.keep != 0) {
					d.fail(fmt.Sprintf("topic %q partition %d: a base checkpoint keeps nothing of a previous one", t.name, j))
				}
			}
			ne := d.count(42, "index entries")
			p.entries = make([]indexEntry, 0, ne)
			for k := 0; k < ne && d.err == nil; k++ {
				x := indexEntry{first: d.u64(), last: d.u64(), maxTime: d.varint()}
				x.appended = x.maxTime
				if version >= 2 {
					x.appended = d.varint()
				}
				x.oldest = x.appended
				if version >= 3 {
					x.oldest = d.varint()
				}
				x.seg, x.pos, x.size, x.count, x.section = d.u32(), d.u32(), d.u32(), d.u32(), d.boolean()
				if d.err == nil && (x.last < x.first || x.size == 0 || (k > 0 && x.first <= p.entries[k-1].last) || x.last >= p.next) {
					d.fail(fmt.Sprintf("topic %q partition %d: index entry %d out of order", t.name, j, k))
				}
				p.entries = append(p.entries, x)
			}
			t.parts = append(t.parts, p)
		}
		c.topics = append(c.topics, t)
	}
	ng := d.count(2, "groups")
	for i := 0; i < ng && d.err == nil; i++ {
		name := d.str()
		no := d.count(16, "offsets")
		offs := make(map[groupKey]uint64, no)
		for j := 0; j < no && d.err == nil; j++ {
			k := groupKey{topic: d.u32(), partition: d.u32()}
			offs[k] = d.u64()
		}
		c.groups[name] = offs
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail(fmt.Sprintf("%d trailing bytes in checkpoint", len(d.b)))
	}
	if d.err != nil {
		return nil, d.err
	}
	return c, nil
}

// follow returns the state of the checkpoint chain prev, then d (a delta
// whose prev position is prev's). It changes neither.
func (prev *checkpoint) follow(d *checkpoint) (*checkpoint, error) {
	out := &checkpoint{seg: d.seg, pos: d.pos, nextTopicID: d.nextTopicID, groups: map[string]map[groupKey]uint64{}}
	before := make(map[uint32]*checkpointTopic, len(prev.topics))
	for i := range prev.topics {
		before[prev.topics[i].id] = &prev.topics[i]
	}
	live := make(map[uint32]bool, len(d.topics))
	for _, dt := range d.topics {
		live[dt.id] = true
		ot := checkpointTopic{id: dt.id, name: dt.name, config: dt.config}
		pt := before[dt.id]
		if pt != nil && (pt.name != dt.name || len(pt.parts) != len(dt.parts)) {
			return nil, fmt.Errorf("%w: checkpoint delta: topic %d is %q with %d partitions, was %q with %d", ferry.ErrCorrupt, dt.id, dt.name, len(dt.parts), pt.name, len(pt.parts))
		}
		for i, dp := range dt.parts {
			var base []indexEntry
			if pt != nil {
				base = pt.parts[i].entries
			}
			if dp.cut > len(base) || dp.keep > len(base)-dp.cut {
				return nil, fmt.Errorf("%w: checkpoint delta: topic %q partition %d keeps entries [%d, %d) of %d", ferry.ErrCorrupt, dt.name, i, dp.cut, dp.cut+dp.keep, len(base))
			}
			kept := base[dp.cut : dp.cut+dp.keep]
			if len(kept) > 0 && len(dp.entries) > 0 && kept[len(kept)-1].last >= dp.entries[0].first {
				return nil, fmt.Errorf("%w: checkpoint delta: topic %q partition %d: new entries overlap the kept ones", ferry.ErrCorrupt, dt.name, i)
			}
			if len(kept) > 0 && kept[len(kept)-1].last >= dp.next {
				return nil, fmt.Errorf("%w: checkpoint delta: topic %q partition %d: a kept entry is past the end", ferry.ErrCorrupt, dt.name, i)
			}
			entries := make([]indexEntry, 0, len(kept)+len(dp.entries))
			entries = append(append(entries, kept...), dp.entries...)
			ot.parts = append(ot.parts, checkpointPartition{start: dp.start, next: dp.next, entries: entries})
		}
		out.topics = append(out.topics, ot)
	}
	for _, src := range []map[string]map[groupKey]uint64{prev.groups, d.groups} {
		for g, offs := range src {
			for k, v := range offs {
				if !live[k.topic] {
					continue // the topic was deleted, and its offsets with it
				}
				if out.groups[g] == nil {
					out.groups[g] = map[groupKey]uint64{}
				}
				out.groups[g][k] = v
			}
		}
	}
	return out, nil
}
