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
//	0        4    5        9        13
//	+--------+----+--------+--------+---------------------------+
//	| magic  |ver | crc32c | length | payload (length bytes)    |
//	+--------+----+--------+--------+---------------------------+
//	payload: seg u32 | pos u64 | next topic ID u32
//	  | topics: count, then id u32 | name | config | partitions: count,
//	      then start u64 | next u64 | entries: count, then
//	      first u64 | last u64 | maxTime varint | appended varint | seg u32 | pos u32 | size u32 | count u32 | section bool
//	  (version 1 has no appended field; its entries take maxTime for it)
//	  | groups: count, then name | offsets: count, then topic u32 | partition u32 | offset u64
const (
	checkpointMagic   = 0x4b595246 // "FRYK"
	checkpointVersion = 2
	checkpointHeader  = 13
)

type checkpoint struct {
	seg         uint32 // the state covers the log up to (seg, pos)
	pos         uint64
	nextTopicID uint32
	topics      []checkpointTopic
	groups      map[string]map[groupKey]uint64
}

type checkpointTopic struct {
	id     uint32
	name   string
	config TopicConfig
	parts  []checkpointPartition
}

type checkpointPartition struct {
	start, next uint64
	entries     []indexEntry
}

func encodeCheckpoint(c *checkpoint) []byte {
	e := encoder{b: make([]byte, checkpointHeader, 4096)}
	e.u32(c.seg)
	e.u64(c.pos)
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
			e.uvarint(uint64(len(p.entries)))
			for _, x := range p.entries {
				e.u64(x.first)
				e.u64(x.last)
				e.varint(x.maxTime)
				e.varint(x.appended)
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
	if version != 1 && version != checkpointVersion {
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
	c.seg = d.u32()
	c.pos = d.u64()
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
			ne := d.count(42, "index entries")
			p.entries = make([]indexEntry, 0, ne)
			for k := 0; k < ne && d.err == nil; k++ {
				x := indexEntry{first: d.u64(), last: d.u64(), maxTime: d.varint()}
				x.appended = x.maxTime
				if version >= 2 {
					x.appended = d.varint()
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
