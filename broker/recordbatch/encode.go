package recordbatch

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// AppendBatch appends b, encoded as a v2 batch compressed with c, to dst
// and returns the extended slice. It computes the length, the record
// count and the CRC, and sets the codec bits of the attributes to c; every
// other field, LastOffsetDelta included, is written as given (a compacted
// batch may end past its last record).
//
// Records are written in one pass straight into dst; with a codec other
// than None they are then compressed into the space after them and moved
// down, so dst's spare capacity is the only scratch space used.
//
// It fails, leaving dst's contents up to len(dst) untouched, if c is not a
// known codec (ErrUnsupportedCodec), if record offset deltas are negative,
// not increasing, or past LastOffsetDelta (ErrInvalidRecord), or if the
// batch would exceed Kafka's 2 GiB length field (ErrTooLarge). A failing
// compressor (which writes to memory, so should not fail) returns its own
// error.
func AppendBatch(dst []byte, b Batch, c Codec) ([]byte, error) {
	if !c.valid() {
		return dst, errUnsupportedCodec(c)
	}
	if err := checkOffsets(&b); err != nil {
		return dst, err
	}
	start := len(dst)
	attrs := b.Attributes&^codecMask | int16(c)
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.BaseOffset))
	dst = binary.BigEndian.AppendUint32(dst, 0) // length, set below
	dst = binary.BigEndian.AppendUint32(dst, uint32(b.PartitionLeaderEpoch))
	dst = append(dst, 2)                        // magic
	dst = binary.BigEndian.AppendUint32(dst, 0) // CRC, set below
	dst = binary.BigEndian.AppendUint16(dst, uint16(attrs))
	dst = binary.BigEndian.AppendUint32(dst, uint32(b.LastOffsetDelta))
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.BaseTimestamp))
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.MaxTimestamp))
	dst = binary.BigEndian.AppendUint64(dst, uint64(b.ProducerID))
	dst = binary.BigEndian.AppendUint16(dst, uint16(b.ProducerEpoch))
	dst = binary.BigEndian.AppendUint32(dst, uint32(b.BaseSequence))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b.Records)))

	recStart := len(dst)
	for i := range b.Records {
		dst = appendRecord(dst, &b.Records[i])
	}
	if c != None {
		end := len(dst)
		var err error
		if dst, err = appendCompressed(dst, dst[recStart:end], c); err != nil {
			return dst[:start], fmt.Errorf("recordbatch: compressing with %s: %w", c, err)
		}
		n := copy(dst[recStart:], dst[end:])
		dst = dst[:recStart+n]
	}

	length := len(dst) - start - lengthPrefix
	if length > math.MaxInt32 {
		return dst[:start], fmt.Errorf("%w: batch of %d bytes: the length field allows at most %d", ErrTooLarge, length, math.MaxInt32)
	}
	batch := dst[start:]
	binary.BigEndian.PutUint32(batch[8:], uint32(length))
	binary.BigEndian.PutUint32(batch[17:], crc32.Checksum(batch[crcStart:], castagnoli))
	return dst, nil
}

// checkOffsets asserts what a consumer relies on to track offsets: record
// offset deltas start at or after 0, increase strictly, and end at or
// before LastOffsetDelta.
func checkOffsets(b *Batch) error {
	prev := int32(-1)
	for i := range b.Records {
		d := b.Records[i].OffsetDelta
		if d <= prev {
			return fmt.Errorf("%w: record %d: offset delta %d after %d: deltas must be non-negative and increasing", ErrInvalidRecord, i, d, prev)
		}
		prev = d
	}
	if prev > b.LastOffsetDelta {
		return fmt.Errorf("%w: last record's offset delta %d is past the batch's LastOffsetDelta %d", ErrInvalidRecord, prev, b.LastOffsetDelta)
	}
	return nil
}

// appendRecord appends r with its length prefix. The body's size is
// computed first so the record is written once, in place.
func appendRecord(dst []byte, r *Record) []byte {
	size := 1 + varintLen(r.TimestampDelta) + varintLen(int64(r.OffsetDelta)) +
		bytesLen(r.Key) + bytesLen(r.Value) + varintLen(int64(len(r.Headers)))
	for i := range r.Headers {
		h := &r.Headers[i]
		size += varintLen(int64(len(h.Key))) + len(h.Key) + bytesLen(h.Value)
	}
	dst = binary.AppendVarint(dst, int64(size))
	dst = append(dst, 0) // attributes
	dst = binary.AppendVarint(dst, r.TimestampDelta)
	dst = binary.AppendVarint(dst, int64(r.OffsetDelta))
	dst = appendBytes(dst, r.Key)
	dst = appendBytes(dst, r.Value)
	dst = binary.AppendVarint(dst, int64(len(r.Headers)))
	for i := range r.Headers {
		h := &r.Headers[i]
		dst = binary.AppendVarint(dst, int64(len(h.Key)))
		dst = append(dst, h.Key...)
		dst = appendBytes(dst, h.Value)
	}
	return dst
}

// appendBytes appends a length-prefixed field; nil is written as null (-1).
func appendBytes(dst, b []byte) []byte {
	if b == nil {
		return binary.AppendVarint(dst, -1)
	}
	return append(binary.AppendVarint(dst, int64(len(b))), b...)
}

// bytesLen is the encoded size of a field appendBytes writes.
func bytesLen(b []byte) int {
	if b == nil {
		return 1
	}
	return varintLen(int64(len(b))) + len(b)
}

// varintLen is the size of v as a zigzag varint.
func varintLen(v int64) int {
	u := uint64(v<<1) ^ uint64(v>>63)
	n := 1
	for u >= 0x80 {
		u >>= 7
		n++
	}
	return n
}
