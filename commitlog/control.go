package commitlog

import (
	"fmt"
	"time"

	"github.com/ferrymq/ferry"
)

// Control records live in sections of topic 0. Their payload starts with
// an op byte:
//
//	opCreateTopic: id u32 | name str | TopicConfig (see encodeTopicConfig)
//	opDeleteTopic: id u32
//	opCommitOffset: group str | topic id u32 | partition u32 | offset u64
//	opAlterTopic: id u32 | TopicConfig (the whole new config)
//	opDeleteOffsets: group str | topic id u32 (0: every topic) |
//	    partition u32 (allPartitions: every partition)
//
// They make topics and consumer offsets part of the log: recovery replays
// them like any other record, and a consumer-offset record can share a
// batch with the messages it produced, which is what makes
// consume-transform-produce atomic.
const (
	opCreateTopic   = 1
	opDeleteTopic   = 2
	opCommitOffset  = 3
	opAlterTopic    = 4
	opDeleteOffsets = 5
)

// allPartitions in an opDeleteOffsets names every partition.
const allPartitions = ^uint32(0)

// deletedOffset marks, in Log.groups, an offset deleted since the last
// base checkpoint: a delta checkpoint carries it like any other change, so
// that the older checkpoints of its chain do not bring the offset back.
// No committed offset can take it (Commit refuses it).
const deletedOffset = ^uint64(0)

type controlOp struct {
	op        uint8
	topicID   uint32
	name      string
	config    TopicConfig
	group     string
	partition uint32
	offset    uint64
}

func encodeTopicConfig(e *encoder, c TopicConfig) {
	e.uvarint(uint64(c.Partitions))
	e.varint(int64(c.RetentionAge))
	e.varint(c.RetentionBytes)
	e.boolean(c.Compact)
	e.varint(int64(c.TombstoneRetention))
	e.varint(int64(c.DedupWindow))
	e.uvarint(uint64(c.DedupMaxIDs))
}

func decodeTopicConfig(d *decoder) TopicConfig {
	var c TopicConfig
	c.Partitions = int(min(d.uvarint(), MaxPartitions+1))
	c.RetentionAge = time.Duration(d.varint())
	c.RetentionBytes = d.varint()
	c.Compact = d.boolean()
	c.TombstoneRetention = time.Duration(d.varint())
	c.DedupWindow = time.Duration(d.varint())
	c.DedupMaxIDs = int(min(d.uvarint(), 1<<40))
	if d.err == nil {
		if err := c.validate(); err != nil {
			d.fail(fmt.Sprintf("topic config: %v", err))
		}
	}
	return c
}

func (c controlOp) encode(b []byte) []byte {
	e := encoder{b: b}
	e.u8(c.op)
	switch c.op {
	case opCreateTopic:
		e.u32(c.topicID)
		e.str(c.name)
		encodeTopicConfig(&e, c.config)
	case opDeleteTopic:
		e.u32(c.topicID)
	case opCommitOffset:
		e.str(c.group)
		e.u32(c.topicID)
		e.u32(c.partition)
		e.u64(c.offset)
	case opAlterTopic:
		e.u32(c.topicID)
		encodeTopicConfig(&e, c.config)
	case opDeleteOffsets:
		e.str(c.group)
		e.u32(c.topicID)
		e.u32(c.partition)
	}
	return e.b
}

func decodeControl(b []byte) (controlOp, error) {
	d := decoder{b: b}
	c := controlOp{op: d.u8()}
	switch c.op {
	case opCreateTopic:
		c.topicID = d.u32()
		c.name = d.str()
		c.config = decodeTopicConfig(&d)
	case opDeleteTopic:
		c.topicID = d.u32()
	case opCommitOffset:
		c.group = d.str()
		c.topicID = d.u32()
		c.partition = d.u32()
		c.offset = d.u64()
	case opAlterTopic:
		c.topicID = d.u32()
		c.config = decodeTopicConfig(&d)
	case opDeleteOffsets:
		c.group = d.str()
		c.topicID = d.u32()
		c.partition = d.u32()
	default:
		if d.err == nil {
			return c, fmt.Errorf("%w: unknown control op %d", ferry.ErrCorrupt, c.op)
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes in control record")
	}
	return c, d.err
}
