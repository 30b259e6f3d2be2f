package recordbatch

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
)

// castagnoli is the CRC-32C table; read-only after package init.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Defaults for zero Limits fields.
const (
	// DefaultMaxBatchBytes is Kafka's default message.max.bytes
	// (1 MiB + 12): the largest batch a stock broker accepts.
	DefaultMaxBatchBytes = 1048588
	// DefaultMaxDecompressedBytes bounds what compressed batches may
	// expand to: 32 times the default batch size, room for very
	// compressible payloads while keeping a request's memory bounded.
	DefaultMaxDecompressedBytes = 32 << 20
	// DefaultMaxRecords bounds the records (and, separately, the headers)
	// of one Decode call. Each decoded record costs about 90 bytes of
	// bookkeeping beyond its data and each header about 40, so without a
	// cap 32 MiB of minimal records would take gigabytes of memory.
	DefaultMaxRecords = 1 << 18
)

// Limits bound the work and memory of one Decode call. A zero or negative
// field takes its default.
type Limits struct {
	// MaxBatchBytes is the largest batch accepted, measured as on the wire
	// including the base offset and length fields (as Kafka measures
	// message.max.bytes). Default DefaultMaxBatchBytes.
	MaxBatchBytes int
	// MaxDecompressedBytes bounds the bytes all compressed batches of the
	// call decompress to, together. Decompression stops and fails with
	// ErrTooLarge as soon as output passes the bound. Output buffers grow
	// by doubling, up to the bound, so a zip bomb holds at most about
	// twice this much memory at once and allocates at most about three
	// times it in all, plus the codec's working memory (for a zstd stream
	// a window, itself capped at this bound). Uncompressed batches are not
	// counted: their records are read in place. Default
	// DefaultMaxDecompressedBytes.
	MaxDecompressedBytes int
	// MaxRecords bounds the records of all batches of the call together,
	// and separately their headers. Default DefaultMaxRecords.
	MaxRecords int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBatchBytes <= 0 {
		l.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if l.MaxDecompressedBytes <= 0 {
		l.MaxDecompressedBytes = DefaultMaxDecompressedBytes
	}
	if l.MaxRecords <= 0 {
		l.MaxRecords = DefaultMaxRecords
	}
	return l
}

// budget is what is left of the Limits during one Decode call.
type budget struct {
	decompressed int
	records      int
	headers      int
}

// Decode parses data, the records field of one partition of a Produce
// request: one or more complete batches, back to back. It checks each
// batch's magic, length and CRC-32C, decompresses its records within lim,
// and checks the rules Kafka applies to produced batches: at least one
// record, exactly as many records as the header says, offset deltas
// 0, 1, ..., n-1 with LastOffsetDelta n-1, and no bytes after the last
// record or the last batch.
//
// The returned records alias data and the decompression buffers (see
// Record). On error no batches are returned; the error wraps one of the
// package's sentinels and names the batch (by index and byte position)
// and what was wrong.
func Decode(data []byte, lim Limits) ([]Batch, error) {
	lim = lim.withDefaults()
	left := budget{decompressed: lim.MaxDecompressedBytes, records: lim.MaxRecords, headers: lim.MaxRecords}
	if len(data) == 0 {
		return nil, fmt.Errorf("%w: no batches: a Produce partition must carry at least one record batch", ErrCorrupt)
	}
	var batches []Batch
	for pos, i := 0, 0; pos < len(data); i++ {
		b, n, err := decodeBatch(data[pos:], lim, &left)
		if err != nil {
			return nil, fmt.Errorf("batch %d at byte %d: %w", i, pos, err)
		}
		batches = append(batches, b)
		pos += n
	}
	return batches, nil
}

// decodeBatch decodes the batch at the start of data and returns it with
// its size. Its errors carry a sentinel and what went wrong; Decode adds
// the position.
func decodeBatch(data []byte, lim Limits, left *budget) (Batch, int, error) {
	if len(data) < 17 {
		return Batch{}, 0, fmt.Errorf("%w: truncated: %d bytes left, a batch header takes %d", ErrCorrupt, len(data), headerSize)
	}
	if magic := int8(data[16]); magic != 2 {
		return Batch{}, 0, fmt.Errorf("%w: magic %d: only record batch format v2 (magic 2) is supported, which clients use from Produce v3 on", ErrUnsupportedVersion, magic)
	}
	length := int64(int32(binary.BigEndian.Uint32(data[8:])))
	if length < headerSize-lengthPrefix {
		return Batch{}, 0, fmt.Errorf("%w: batch length %d: a v2 batch is at least %d bytes after the length field", ErrCorrupt, length, headerSize-lengthPrefix)
	}
	size := lengthPrefix + length
	if size > int64(lim.MaxBatchBytes) {
		return Batch{}, 0, fmt.Errorf("%w: batch of %d bytes: at most %d allowed", ErrTooLarge, size, lim.MaxBatchBytes)
	}
	if size > int64(len(data)) {
		return Batch{}, 0, fmt.Errorf("%w: truncated: batch length says %d bytes, %d present", ErrCorrupt, size, len(data))
	}
	raw := data[:size]
	want := binary.BigEndian.Uint32(raw[17:])
	if got := crc32.Checksum(raw[crcStart:], castagnoli); got != want {
		return Batch{}, 0, fmt.Errorf("%w: CRC-32C mismatch: header says %08x, bytes give %08x", ErrCorrupt, want, got)
	}

	b := Batch{
		BaseOffset:           int64(binary.BigEndian.Uint64(raw[0:])),
		PartitionLeaderEpoch: int32(binary.BigEndian.Uint32(raw[12:])),
		Attributes:           int16(binary.BigEndian.Uint16(raw[21:])),
		LastOffsetDelta:      int32(binary.BigEndian.Uint32(raw[23:])),
		BaseTimestamp:        int64(binary.BigEndian.Uint64(raw[27:])),
		MaxTimestamp:         int64(binary.BigEndian.Uint64(raw[35:])),
		ProducerID:           int64(binary.BigEndian.Uint64(raw[43:])),
		ProducerEpoch:        int16(binary.BigEndian.Uint16(raw[51:])),
		BaseSequence:         int32(binary.BigEndian.Uint32(raw[53:])),
	}
	count := int32(binary.BigEndian.Uint32(raw[57:]))
	codec := b.Codec()
	if !codec.valid() {
		return Batch{}, 0, errUnsupportedCodec(codec)
	}
	switch {
	case count <= 0:
		return Batch{}, 0, fmt.Errorf("%w: record count %d: a produced batch holds at least one record", ErrInvalidRecord, count)
	case int(count) > left.records:
		return Batch{}, 0, fmt.Errorf("%w: %d records: the limit is %d per request and %d are used by earlier batches", ErrTooLarge, count, lim.MaxRecords, lim.MaxRecords-left.records)
	case b.LastOffsetDelta != count-1:
		return Batch{}, 0, fmt.Errorf("%w: last offset delta %d with %d records: must be the record count minus one", ErrInvalidRecord, b.LastOffsetDelta, count)
	}

	records := raw[headerSize:]
	if codec != None {
		out, err := decompress(codec, records, left.decompressed)
		if err != nil {
			return Batch{}, 0, err
		}
		left.decompressed -= len(out)
		records = out
	}
	if int64(count)*minRecordSize > int64(len(records)) {
		return Batch{}, 0, fmt.Errorf("%w: record count %d: %d bytes of records hold at most %d", ErrInvalidRecord, count, len(records), len(records)/minRecordSize)
	}
	left.records -= int(count)
	b.Records = make([]Record, count)
	for k := range b.Records {
		if len(records) == 0 {
			return Batch{}, 0, fmt.Errorf("%w: record count %d: only %d records present", ErrInvalidRecord, count, k)
		}
		rest, err := parseRecord(records, &b.Records[k], left)
		if err != nil {
			return Batch{}, 0, fmt.Errorf("record %d: %w", k, err)
		}
		if d := b.Records[k].OffsetDelta; d != int32(k) {
			return Batch{}, 0, fmt.Errorf("%w: record %d: offset delta %d: produced records must have offset deltas 0, 1, ..., n-1 in order", ErrInvalidRecord, k, d)
		}
		records = rest
	}
	if len(records) != 0 {
		return Batch{}, 0, fmt.Errorf("%w: %d bytes after the last of %d records: the record count must cover every record", ErrInvalidRecord, len(records), count)
	}
	return b, int(size), nil
}

// parseRecord parses the record at the start of b into r and returns what
// follows it. Headers are charged to left.headers.
func parseRecord(b []byte, r *Record, left *budget) ([]byte, error) {
	length, n := binary.Varint(b)
	if n <= 0 {
		return nil, fmt.Errorf("%w: bad record length varint", ErrCorrupt)
	}
	b = b[n:]
	if length < 0 || length > int64(len(b)) {
		return nil, fmt.Errorf("%w: record length %d: %d bytes left", ErrCorrupt, length, len(b))
	}
	body, rest := b[:length:length], b[length:]
	if len(body) < 1 {
		return nil, fmt.Errorf("%w: empty record: a record holds at least %d bytes", ErrCorrupt, minRecordSize-1)
	}
	body = body[1:] // attributes: unused in v2
	var err error
	var off int64
	if r.TimestampDelta, body, err = varlong(body, "timestamp delta"); err != nil {
		return nil, err
	}
	if off, body, err = varint32(body, "offset delta"); err != nil {
		return nil, err
	}
	r.OffsetDelta = int32(off)
	if r.Key, body, err = bytesField(body, "key length"); err != nil {
		return nil, err
	}
	if r.Value, body, err = bytesField(body, "value length"); err != nil {
		return nil, err
	}
	nh, body, err := varint32(body, "header count")
	if err != nil {
		return nil, err
	}
	switch {
	case nh < 0:
		return nil, fmt.Errorf("%w: header count %d: must not be negative", ErrCorrupt, nh)
	case nh*minHeaderSize > int64(len(body)):
		return nil, fmt.Errorf("%w: header count %d: %d bytes left hold at most %d", ErrCorrupt, nh, len(body), len(body)/minHeaderSize)
	case nh > int64(left.headers):
		return nil, fmt.Errorf("%w: %d headers: only %d more allowed in this request (Limits.MaxRecords caps headers too)", ErrTooLarge, nh, left.headers)
	}
	if nh > 0 {
		left.headers -= int(nh)
		r.Headers = make([]Header, nh)
		for i := range r.Headers {
			h := &r.Headers[i]
			var key []byte
			if key, body, err = bytesField(body, "header key length"); err != nil {
				return nil, fmt.Errorf("header %d: %w", i, err)
			}
			if key == nil {
				return nil, fmt.Errorf("%w: header %d: null key: header keys must not be null", ErrCorrupt, i)
			}
			h.Key = string(key)
			if h.Value, body, err = bytesField(body, "header value length"); err != nil {
				return nil, fmt.Errorf("header %d: %w", i, err)
			}
		}
	}
	if len(body) != 0 {
		return nil, fmt.Errorf("%w: record length says %d bytes, its fields take %d", ErrCorrupt, length, int(length)-len(body))
	}
	return rest, nil
}

func varlong(b []byte, what string) (int64, []byte, error) {
	v, n := binary.Varint(b)
	if n <= 0 {
		return 0, nil, fmt.Errorf("%w: bad %s varint", ErrCorrupt, what)
	}
	return v, b[n:], nil
}

func varint32(b []byte, what string) (int64, []byte, error) {
	v, b, err := varlong(b, what)
	if err == nil && (v < math.MinInt32 || v > math.MaxInt32) {
		err = fmt.Errorf("%w: %s %d: does not fit in 32 bits", ErrCorrupt, what, v)
	}
	return v, b, err
}

// bytesField reads a varint length (named by what in errors) and that
// many bytes; length -1 is null (nil). The result aliases b, capped so
// appending to it cannot overwrite what follows.
func bytesField(b []byte, what string) ([]byte, []byte, error) {
	n, b, err := varint32(b, what)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case n == -1:
		return nil, b, nil
	case n < -1 || n > int64(len(b)):
		return nil, nil, fmt.Errorf("%w: %s %d: must be -1 (null) or 0..%d (the bytes left)", ErrCorrupt, what, n, len(b))
	}
	return b[:n:n], b[n:], nil
}
