package recordbatch

import "strconv"

// Codec is a compression codec, as stored in bits 0-2 of a batch's
// attributes.
type Codec int8

// The codecs Kafka defines. Values 5 to 7 are unassigned.
const (
	None   Codec = 0
	Gzip   Codec = 1
	Snappy Codec = 2
	LZ4    Codec = 3
	Zstd   Codec = 4
)

// String returns the codec's name as Kafka's compression.type spells it.
func (c Codec) String() string {
	switch c {
	case None:
		return "none"
	case Gzip:
		return "gzip"
	case Snappy:
		return "snappy"
	case LZ4:
		return "lz4"
	case Zstd:
		return "zstd"
	}
	return "codec(" + strconv.Itoa(int(c)) + ")"
}

func (c Codec) valid() bool { return c >= None && c <= Zstd }

// Attribute bits of a batch.
const (
	codecMask         = 0x07
	attrLogAppendTime = 0x08
	attrTransactional = 0x10
	attrControl       = 0x20
)

// Sizes of the fixed parts of the format.
const (
	// headerSize is the size of a batch's fixed header, up to and including
	// the record count.
	headerSize = 61
	// lengthPrefix is the base offset and length fields, which the length
	// does not count.
	lengthPrefix = 12
	// crcStart is where the bytes the CRC covers begin (the attributes).
	crcStart = 21
	// minRecordSize is the smallest encoded record: one byte each for the
	// length, attributes, timestamp delta, offset delta, key length, value
	// length and header count.
	minRecordSize = 7
	// minHeaderSize is the smallest encoded header: an empty key and a null
	// value.
	minHeaderSize = 2
)

// Header is a record header. Kafka header keys are never null; a nil Value
// is a null value.
type Header struct {
	Key   string
	Value []byte
}

// Record is one record of a batch. A nil Key or Value is null on the wire;
// a non-nil empty one is empty.
//
// Records returned by Decode alias the decoded input (or the buffer it was
// decompressed into): copy Key, Value and header values that must outlive
// that input, and do not modify the input while the records are in use.
type Record struct {
	// OffsetDelta is the record's offset minus the batch's BaseOffset.
	OffsetDelta int32
	// TimestampDelta is the record's timestamp (Unix milliseconds) minus
	// the batch's BaseTimestamp.
	TimestampDelta int64
	Key            []byte
	Value          []byte
	Headers        []Header
}

// Batch is a record batch. Field names follow the Kafka protocol
// documentation (BaseTimestamp is kmsg's FirstTimestamp).
type Batch struct {
	// BaseOffset is the offset of the batch's first record. Producers send
	// 0; the broker assigns it.
	BaseOffset int64
	// PartitionLeaderEpoch is set by the broker; producers send -1 or 0.
	PartitionLeaderEpoch int32
	// Attributes holds the codec (bits 0-2) and the flags the methods
	// below read. Decode returns it as it was on the wire; AppendBatch
	// replaces the codec bits with its codec argument.
	Attributes int16
	// LastOffsetDelta is the offset delta of the batch's last record.
	LastOffsetDelta int32
	// BaseTimestamp is the timestamp of the first record, in Unix
	// milliseconds; record timestamps are deltas from it.
	BaseTimestamp int64
	// MaxTimestamp is the largest record timestamp in the batch (or the
	// log append time when LogAppendTime is set).
	MaxTimestamp int64
	// ProducerID, ProducerEpoch and BaseSequence identify an idempotent or
	// transactional producer's batch; -1 when the producer is neither.
	ProducerID    int64
	ProducerEpoch int16
	BaseSequence  int32
	// Records are the batch's records, in offset order.
	Records []Record
}

// Codec returns the batch's compression codec (attribute bits 0-2).
func (b *Batch) Codec() Codec { return Codec(b.Attributes & codecMask) }

// LogAppendTime reports whether the batch's timestamps are the broker's
// append time rather than the producer's create time (attribute bit 3).
func (b *Batch) LogAppendTime() bool { return b.Attributes&attrLogAppendTime != 0 }

// Transactional reports whether the batch belongs to a transaction
// (attribute bit 4).
func (b *Batch) Transactional() bool { return b.Attributes&attrTransactional != 0 }

// Control reports whether the batch is a control batch holding a
// transaction marker rather than data (attribute bit 5). Kafka refuses
// control batches from clients; that check belongs to the caller.
func (b *Batch) Control() bool { return b.Attributes&attrControl != 0 }

// NumRecords returns the number of records in the batch.
func (b *Batch) NumRecords() int { return len(b.Records) }
