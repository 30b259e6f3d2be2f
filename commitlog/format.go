package commitlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"

	"github.com/ferrymq/ferry"
)

// On-disk batch format. A batch is the unit of writing, of checksumming and
// of atomicity: it holds one Append (or Commit) call, whatever topics and
// partitions that call touched, plus any consumer-offset records that must
// commit with it. Integers are little-endian.
//
//	batch
//	 0        4        8        12   13    14      16                24
//	 +--------+--------+--------+----+-----+-------+-----------------+
//	 | magic  | length | crc32c |ver |flags| nsect | append time (ns)|
//	 +--------+--------+--------+----+-----+-------+-----------------+
//	 | section 0 | section 1 | ... (nsect sections)                  |
//	 +---------------------------------------------------------------+
//	 length: bytes of the whole batch, header included.
//	 crc32c: Castagnoli CRC of bytes [12, length).
//
//	section (44-byte header, then count records)
//	 0        4        8              16             24       28       32           40       44
//	 +--------+--------+--------------+--------------+--------+--------+------------+--------+
//	 | topic  | part.  | first offset | last offset  | count  | bodylen| max time ns| crc32c |
//	 +--------+--------+--------------+--------------+--------+--------+------------+--------+
//	 crc32c: of header bytes [0, 40) and the body, so that a reader of one
//	 partition can read and verify its own section without the rest of a
//	 batch shared with other partitions.
//	 topic 0 is the control topic: topic creation and deletion, consumer
//	 offsets. Offsets of a section may be sparse (after compaction) but
//	 every record's offset lies in [first, last].
//
//	record
//	 attrs u8 | offset delta uvarint | time delta varint | id [16]
//	 | not-before varint (if attrs&attrNotBefore) | key len uvarint | key
//	 | value len uvarint | value | header count uvarint
//	 | (name len uvarint | name | value len uvarint | value)*
//	 offset delta: from the section's first offset; time delta: from the
//	 section's max time (so it is zero or negative). attrs&attrNullValue marks a tombstone (nil payload).
const (
	batchMagic         = 0x31595246 // "FRY1"
	batchVersion       = 1
	batchHeaderSize    = 24
	sectionHeaderSize  = 44
	flagRelocated      = 1 << 0 // sections rewrite existing offsets (cleaner)
	attrNullValue      = 1 << 0
	attrNotBefore      = 1 << 1
	controlTopicID     = 0
	maxSectionsInBatch = 1<<16 - 1 // the header's section count is 16 bits
	// maxMessagesInGroup bounds the messages of one batch and of one group
	// commit, so that their sections (at most one per message, plus one
	// for offsets) always fit in the header's count.
	maxMessagesInGroup = maxSectionsInBatch - 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errTorn reports bytes that do not form a complete batch; where it is
// found decides whether it is a torn tail or corruption.
var errTorn = errors.New("incomplete batch")

type batchHeader struct {
	length     uint32
	crc        uint32
	version    uint8
	flags      uint8
	sections   uint16
	appendTime int64
}

type sectionHeader struct {
	topic     uint32
	partition uint32
	first     uint64
	last      uint64
	count     uint32
	bodyLen   uint32
	maxTime   int64
	crc       uint32
}

// putBatchHeader fills in the header of the batch in b (b[:length]) and its
// CRC; the sections must already be in place.
func putBatchHeader(b []byte, flags uint8, sections int, appendTime int64) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], batchMagic)
	le.PutUint32(b[4:], uint32(len(b)))
	b[12] = batchVersion
	b[13] = flags
	le.PutUint16(b[14:], uint16(sections))
	le.PutUint64(b[16:], uint64(appendTime))
	le.PutUint32(b[8:], crc32.Checksum(b[12:], castagnoli))
}

// putSectionHeader fills in the header of the section in b, whose body
// (s.bodyLen bytes) must already follow it, and the section's CRC.
func putSectionHeader(b []byte, s sectionHeader) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], s.topic)
	le.PutUint32(b[4:], s.partition)
	le.PutUint64(b[8:], s.first)
	le.PutUint64(b[16:], s.last)
	le.PutUint32(b[24:], s.count)
	le.PutUint32(b[28:], s.bodyLen)
	le.PutUint64(b[32:], uint64(s.maxTime))
	le.PutUint32(b[40:], sectionCRC(b[:sectionHeaderSize+int(s.bodyLen)]))
}

// sectionCRC is the CRC of a section (header and body), skipping the CRC
// field itself.
func sectionCRC(sec []byte) uint32 {
	c := crc32.Checksum(sec[:40], castagnoli)
	return crc32.Update(c, castagnoli, sec[sectionHeaderSize:])
}

// decodeSectionHeader parses a section header without checking its CRC.
func decodeSectionHeader(s []byte) sectionHeader {
	le := binary.LittleEndian
	return sectionHeader{
		topic:     le.Uint32(s[0:]),
		partition: le.Uint32(s[4:]),
		first:     le.Uint64(s[8:]),
		last:      le.Uint64(s[16:]),
		count:     le.Uint32(s[24:]),
		bodyLen:   le.Uint32(s[28:]),
		maxTime:   int64(le.Uint64(s[32:])),
		crc:       le.Uint32(s[40:]),
	}
}

// checkSection verifies a section read on its own (sec holds exactly its
// header and body) and returns its header.
func checkSection(sec []byte) (sectionHeader, error) {
	if len(sec) < sectionHeaderSize {
		return sectionHeader{}, fmt.Errorf("%w: section of %d bytes is shorter than its header", ferry.ErrCorrupt, len(sec))
	}
	sh := decodeSectionHeader(sec)
	if int(sh.bodyLen) != len(sec)-sectionHeaderSize {
		return sectionHeader{}, fmt.Errorf("%w: section body of %d bytes, have %d", ferry.ErrCorrupt, sh.bodyLen, len(sec)-sectionHeaderSize)
	}
	if got := sectionCRC(sec); got != sh.crc {
		return sectionHeader{}, fmt.Errorf("%w: section checksum mismatch (stored %#08x, computed %#08x)", ferry.ErrCorrupt, sh.crc, got)
	}
	if err := checkSectionOffsets(sh); err != nil {
		return sectionHeader{}, err
	}
	return sh, nil
}

func checkSectionOffsets(sh sectionHeader) error {
	if sh.last < sh.first || (sh.count > 0 && sh.last-sh.first < uint64(sh.count)-1) {
		return fmt.Errorf("%w: section offsets [%d, %d] cannot hold %d records", ferry.ErrCorrupt, sh.first, sh.last, sh.count)
	}
	return nil
}

// peekBatchLength reads the magic and length of a batch header. It returns
// errTorn when hdr is short or zeroed, and ErrCorrupt for a wrong magic.
func peekBatchLength(hdr []byte) (uint32, error) {
	if len(hdr) < batchHeaderSize {
		return 0, errTorn
	}
	le := binary.LittleEndian
	magic := le.Uint32(hdr[0:])
	if magic == 0 {
		return 0, errTorn
	}
	if magic != batchMagic {
		return 0, fmt.Errorf("%w: bad batch magic %#x", ferry.ErrCorrupt, magic)
	}
	n := le.Uint32(hdr[4:])
	if n < batchHeaderSize {
		return 0, fmt.Errorf("%w: batch length %d shorter than its header", ferry.ErrCorrupt, n)
	}
	return n, nil
}

// decodeBatchHeader checks the framing and CRC of the batch in b, which
// must hold exactly the batch (b[:length]).
func decodeBatchHeader(b []byte) (batchHeader, error) {
	n, err := peekBatchLength(b)
	if err != nil {
		return batchHeader{}, err
	}
	if int(n) != len(b) {
		return batchHeader{}, fmt.Errorf("%w: batch length %d, have %d bytes", errTorn, n, len(b))
	}
	le := binary.LittleEndian
	h := batchHeader{
		length:     n,
		crc:        le.Uint32(b[8:]),
		version:    b[12],
		flags:      b[13],
		sections:   le.Uint16(b[14:]),
		appendTime: int64(le.Uint64(b[16:])),
	}
	if got := crc32.Checksum(b[12:], castagnoli); got != h.crc {
		return batchHeader{}, fmt.Errorf("%w: batch checksum mismatch (stored %#08x, computed %#08x)", ferry.ErrCorrupt, h.crc, got)
	}
	if h.version != batchVersion {
		return batchHeader{}, fmt.Errorf("%w: unknown batch version %d (this build reads %d)", ferry.ErrCorrupt, h.version, batchVersion)
	}
	return h, nil
}

// forEachSection walks the sections of a checksummed batch. fn gets the
// section header, its record bytes and the section's offset in b. The
// batch CRC covers the sections, so their own CRCs are not checked here.
func forEachSection(b []byte, h batchHeader, fn func(sh sectionHeader, body []byte, at int) error) error {
	pos := batchHeaderSize
	for i := 0; i < int(h.sections); i++ {
		if len(b)-pos < sectionHeaderSize {
			return fmt.Errorf("%w: section %d header past end of batch", ferry.ErrCorrupt, i)
		}
		at := pos
		sh := decodeSectionHeader(b[pos:])
		pos += sectionHeaderSize
		if uint64(sh.bodyLen) > uint64(len(b)-pos) {
			return fmt.Errorf("%w: section %d body of %d bytes past end of batch", ferry.ErrCorrupt, i, sh.bodyLen)
		}
		if err := checkSectionOffsets(sh); err != nil {
			return err
		}
		if err := fn(sh, b[pos:pos+int(sh.bodyLen)], at); err != nil {
			return err
		}
		pos += int(sh.bodyLen)
	}
	if pos != len(b) {
		return fmt.Errorf("%w: %d trailing bytes after last section", ferry.ErrCorrupt, len(b)-pos)
	}
	return nil
}

// appendRecord encodes m (with offset first+delta) onto b; baseTime is the
// section's max time.
func appendRecord(b []byte, m *ferry.Message, delta uint64, baseTime int64) []byte {
	var attrs byte
	if m.Payload == nil {
		attrs |= attrNullValue
	}
	if !m.NotBefore.IsZero() {
		attrs |= attrNotBefore
	}
	b = append(b, attrs)
	b = binary.AppendUvarint(b, delta)
	b = binary.AppendVarint(b, m.Time.UnixNano()-baseTime)
	b = append(b, m.ID[:]...)
	if attrs&attrNotBefore != 0 {
		b = binary.AppendVarint(b, m.NotBefore.UnixNano())
	}
	b = binary.AppendUvarint(b, uint64(len(m.Key)))
	b = append(b, m.Key...)
	b = binary.AppendUvarint(b, uint64(len(m.Payload)))
	b = append(b, m.Payload...)
	b = binary.AppendUvarint(b, uint64(len(m.Headers)))
	for _, h := range m.Headers {
		b = binary.AppendUvarint(b, uint64(len(h.Key)))
		b = append(b, h.Key...)
		b = binary.AppendUvarint(b, uint64(len(h.Value)))
		b = append(b, h.Value...)
	}
	return b
}

// recordSize returns the encoded size of m, an upper bound that the
// writer uses to check limits before it encodes.
func recordSize(m *ferry.Message) int {
	n := 1 + binary.MaxVarintLen64*3 + 16 + binary.MaxVarintLen64*3 + len(m.Key) + len(m.Payload)
	for _, h := range m.Headers {
		n += 2*binary.MaxVarintLen64 + len(h.Key) + len(h.Value)
	}
	return n
}

// recordDecoder walks the records of one section body.
type recordDecoder struct {
	body []byte
	pos  int
	sh   sectionHeader
	left uint32
	// keys are the header keys of the record decoded last: the records of
	// a section mostly repeat them, so an equal key reuses its string
	// instead of allocating one per header.
	keys []string
}

func newRecordDecoder(sh sectionHeader, body []byte) recordDecoder {
	return recordDecoder{body: body, sh: sh, left: sh.count}
}

var errShortRecord = fmt.Errorf("%w: record truncated", ferry.ErrCorrupt)

func (d *recordDecoder) uvarint() (uint64, error) {
	v, n := binary.Uvarint(d.body[d.pos:])
	if n <= 0 {
		return 0, errShortRecord
	}
	d.pos += n
	return v, nil
}

func (d *recordDecoder) varint() (int64, error) {
	v, n := binary.Varint(d.body[d.pos:])
	if n <= 0 {
		return 0, errShortRecord
	}
	d.pos += n
	return v, nil
}

func (d *recordDecoder) bytes() ([]byte, error) {
	n, err := d.uvarint()
	if err != nil {
		return nil, err
	}
	if n > uint64(len(d.body)-d.pos) {
		return nil, errShortRecord
	}
	v := d.body[d.pos : d.pos+int(n) : d.pos+int(n)]
	d.pos += int(n)
	return v, nil
}

// next decodes the next record into m (Topic and Partition are left to the
// caller). Key, Payload and header values alias the section body. It
// returns false when the section is exhausted.
func (d *recordDecoder) next(m *ferry.Message) (bool, error) {
	if d.left == 0 {
		if d.pos != len(d.body) {
			return false, fmt.Errorf("%w: %d trailing bytes after last record", ferry.ErrCorrupt, len(d.body)-d.pos)
		}
		return false, nil
	}
	d.left--
	if d.pos >= len(d.body) {
		return false, errShortRecord
	}
	attrs := d.body[d.pos]
	d.pos++
	if attrs&^(attrNullValue|attrNotBefore) != 0 {
		return false, fmt.Errorf("%w: unknown record attributes %#x", ferry.ErrCorrupt, attrs)
	}
	delta, err := d.uvarint()
	if err != nil {
		return false, err
	}
	if delta > d.sh.last-d.sh.first {
		return false, fmt.Errorf("%w: record offset delta %d outside section [%d, %d]", ferry.ErrCorrupt, delta, d.sh.first, d.sh.last)
	}
	m.Offset = d.sh.first + delta
	td, err := d.varint()
	if err != nil {
		return false, err
	}
	m.Time = time.Unix(0, d.sh.maxTime+td)
	if len(d.body)-d.pos < 16 {
		return false, errShortRecord
	}
	copy(m.ID[:], d.body[d.pos:])
	d.pos += 16
	m.NotBefore = time.Time{}
	if attrs&attrNotBefore != 0 {
		nb, err := d.varint()
		if err != nil {
			return false, err
		}
		m.NotBefore = time.Unix(0, nb)
	}
	if m.Key, err = d.bytes(); err != nil {
		return false, err
	}
	if len(m.Key) == 0 {
		m.Key = nil
	}
	if m.Payload, err = d.bytes(); err != nil {
		return false, err
	}
	if attrs&attrNullValue != 0 {
		if len(m.Payload) != 0 {
			return false, fmt.Errorf("%w: tombstone record with a %d-byte value", ferry.ErrCorrupt, len(m.Payload))
		}
		m.Payload = nil
	} else if m.Payload == nil {
		m.Payload = []byte{}
	}
	nh, err := d.uvarint()
	if err != nil {
		return false, err
	}
	if nh > uint64(len(d.body)-d.pos)/2 {
		return false, fmt.Errorf("%w: %d headers cannot fit in the record", ferry.ErrCorrupt, nh)
	}
	m.Headers = nil
	if nh > 0 {
		m.Headers = make([]ferry.Header, nh)
		for i := range m.Headers {
			k, err := d.bytes()
			if err != nil {
				return false, err
			}
			v, err := d.bytes()
			if err != nil {
				return false, err
			}
			if i >= len(d.keys) {
				d.keys = append(d.keys, string(k))
			} else if d.keys[i] != string(k) {
				d.keys[i] = string(k)
			}
			m.Headers[i] = ferry.Header{Key: d.keys[i], Value: v}
		}
	}
	return true, nil
}
