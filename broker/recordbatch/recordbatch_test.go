package recordbatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

var allCodecs = []Codec{None, Gzip, Snappy, LZ4, Zstd}

// bigLimits lets the round-trip tests through with large values; the
// limits themselves are tested separately.
var bigLimits = Limits{MaxBatchBytes: 64 << 20, MaxDecompressedBytes: 64 << 20, MaxRecords: 1 << 20}

// testBatch returns a batch of n records built by rec, with every header
// field set to something other than its zero value.
func testBatch(n int, rec func(i int) Record) Batch {
	b := Batch{
		BaseOffset:           1234,
		PartitionLeaderEpoch: 7,
		Attributes:           attrTransactional,
		LastOffsetDelta:      int32(n - 1),
		BaseTimestamp:        1_700_000_000_000,
		MaxTimestamp:         1_700_000_000_000 + int64(n),
		ProducerID:           99,
		ProducerEpoch:        3,
		BaseSequence:         42,
	}
	for i := range n {
		r := rec(i)
		r.OffsetDelta = int32(i)
		b.Records = append(b.Records, r)
	}
	return b
}

func plain(i int) Record {
	return Record{
		TimestampDelta: int64(i),
		Key:            fmt.Appendf(nil, "key-%d", i),
		Value:          fmt.Appendf(nil, "value-%d-%s", i, bytes.Repeat([]byte("x"), i%50)),
		Headers:        []Header{{Key: "h", Value: []byte("v")}},
	}
}

// equalRecords compares records exactly, nil (null) against empty
// included; only a nil and an empty Headers slice count as the same.
func equalRecords(t *testing.T, want, got []Record) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%d records, want %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.OffsetDelta != g.OffsetDelta || w.TimestampDelta != g.TimestampDelta {
			t.Fatalf("record %d: deltas offset %d ts %d, want %d %d", i, g.OffsetDelta, g.TimestampDelta, w.OffsetDelta, w.TimestampDelta)
		}
		if !sameBytes(w.Key, g.Key) || !sameBytes(w.Value, g.Value) {
			t.Fatalf("record %d: key %q value %.40q, want %q %.40q (nil: %v %v, want %v %v)", i, g.Key, g.Value, w.Key, w.Value, g.Key == nil, g.Value == nil, w.Key == nil, w.Value == nil)
		}
		if len(w.Headers) != len(g.Headers) {
			t.Fatalf("record %d: %d headers, want %d", i, len(g.Headers), len(w.Headers))
		}
		for j := range w.Headers {
			if w.Headers[j].Key != g.Headers[j].Key || !sameBytes(w.Headers[j].Value, g.Headers[j].Value) {
				t.Fatalf("record %d header %d: %q=%q, want %q=%q", i, j, g.Headers[j].Key, g.Headers[j].Value, w.Headers[j].Key, w.Headers[j].Value)
			}
		}
	}
}

// sameBytes is bytes.Equal that also tells null from empty.
func sameBytes(a, b []byte) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

// equalHeader compares every batch field but the records, ignoring the
// codec bits, which AppendBatch sets.
func equalHeader(t *testing.T, want, got Batch) {
	t.Helper()
	want.Records, got.Records = nil, nil
	want.Attributes &^= codecMask
	got.Attributes &^= codecMask
	if fmt.Sprint(want) != fmt.Sprint(got) {
		t.Fatalf("batch header\n got %+v\nwant %+v", got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	large := make([]byte, 4<<20)
	for i := range large {
		large[i] = byte(rng.IntN(16)) // compressible, not trivially
	}
	cases := []struct {
		name string
		b    Batch
	}{
		{"one record", testBatch(1, plain)},
		{"1000 records", testBatch(1000, plain)},
		{"null key and value", testBatch(3, func(i int) Record { return Record{} })},
		{"empty key and value", testBatch(3, func(i int) Record { return Record{Key: []byte{}, Value: []byte{}} })},
		{"null key, value set", testBatch(2, func(i int) Record { return Record{Value: []byte("v")} })},
		{"no headers", testBatch(5, func(i int) Record { return Record{Key: []byte("k"), Value: []byte("v")} })},
		{"many headers", testBatch(10, func(i int) Record {
			r := Record{Key: []byte("k")}
			for j := range 300 {
				var v []byte
				switch j % 3 {
				case 0:
					v = fmt.Appendf(nil, "value %d", j)
				case 1:
					v = []byte{} // empty, not null
				}
				r.Headers = append(r.Headers, Header{Key: fmt.Sprintf("header-%d", j), Value: v})
			}
			r.Headers = append(r.Headers, Header{Key: "", Value: []byte("empty key")})
			return r
		})},
		{"large values", testBatch(4, func(i int) Record {
			return Record{Key: large[:1000], Value: large[i*(512<<10):][:2<<20], TimestampDelta: -int64(i)}
		})},
		{"negative and huge deltas", testBatch(2, func(i int) Record { return Record{TimestampDelta: -1 << 40 * int64(i+1)} })},
	}
	for _, tc := range cases {
		for _, c := range allCodecs {
			t.Run(tc.name+"/"+c.String(), func(t *testing.T) {
				prefix := []byte("prefix")
				enc, err := AppendBatch(prefix, tc.b, c)
				if err != nil {
					t.Fatal(err)
				}
				if string(enc[:len(prefix)]) != "prefix" {
					t.Fatal("AppendBatch changed dst's existing bytes")
				}
				got, err := Decode(enc[len(prefix):], bigLimits)
				if err != nil {
					t.Fatal(err)
				}
				if len(got) != 1 {
					t.Fatalf("%d batches, want 1", len(got))
				}
				if got[0].Codec() != c {
					t.Fatalf("codec %v, want %v", got[0].Codec(), c)
				}
				if !got[0].Transactional() || got[0].Control() || got[0].LogAppendTime() {
					t.Fatalf("flags: transactional %v control %v log append time %v", got[0].Transactional(), got[0].Control(), got[0].LogAppendTime())
				}
				if got[0].NumRecords() != len(tc.b.Records) {
					t.Fatalf("NumRecords %d, want %d", got[0].NumRecords(), len(tc.b.Records))
				}
				equalHeader(t, tc.b, got[0])
				equalRecords(t, tc.b.Records, got[0].Records)
			})
		}
	}
}

// TestDecodeConcatenated decodes several batches of different codecs back
// to back, as a Produce partition may carry them.
func TestDecodeConcatenated(t *testing.T) {
	var data []byte
	var want []Batch
	for i, c := range allCodecs {
		b := testBatch(i+1, plain)
		b.BaseOffset = int64(10 * i)
		var err error
		if data, err = AppendBatch(data, b, c); err != nil {
			t.Fatal(err)
		}
		want = append(want, b)
	}
	got, err := Decode(data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d batches, want %d", len(got), len(want))
	}
	for i := range want {
		equalHeader(t, want[i], got[i])
		equalRecords(t, want[i].Records, got[i].Records)
	}
}

func TestBatchFlags(t *testing.T) {
	for _, tc := range []struct {
		attrs                   int16
		codec                   Codec
		logAppend, txn, control bool
	}{
		{0, None, false, false, false},
		{0x04, Zstd, false, false, false},
		{0x08 | 0x01, Gzip, true, false, false},
		{0x10 | 0x03, LZ4, false, true, false},
		{0x30, None, false, true, true},
	} {
		b := Batch{Attributes: tc.attrs}
		if b.Codec() != tc.codec || b.LogAppendTime() != tc.logAppend || b.Transactional() != tc.txn || b.Control() != tc.control {
			t.Errorf("attributes %#x: codec %v logAppend %v txn %v control %v", tc.attrs, b.Codec(), b.LogAppendTime(), b.Transactional(), b.Control())
		}
	}
}

func TestAppendBatchRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    Batch
		c    Codec
		want error
	}{
		{"codec 5", testBatch(1, plain), 5, ErrUnsupportedCodec},
		{"codec -1", testBatch(1, plain), -1, ErrUnsupportedCodec},
		{"offset deltas not increasing", Batch{LastOffsetDelta: 5, Records: []Record{{OffsetDelta: 2}, {OffsetDelta: 2}}}, None, ErrInvalidRecord},
		{"negative offset delta", Batch{LastOffsetDelta: 5, Records: []Record{{OffsetDelta: -1}}}, None, ErrInvalidRecord},
		{"delta past LastOffsetDelta", Batch{LastOffsetDelta: 0, Records: []Record{{OffsetDelta: 0}, {OffsetDelta: 1}}}, None, ErrInvalidRecord},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := []byte("keep")
			out, err := AppendBatch(dst, tc.b, tc.c)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if string(out) != "keep" {
				t.Fatalf("dst %q after a refused append, want it unchanged", out)
			}
		})
	}
}

// TestAppendBatchGaps: a compacted batch (gaps in offset deltas,
// LastOffsetDelta past the last record) encodes as given. Decode refuses
// it, because a produced batch may not have gaps.
func TestAppendBatchGaps(t *testing.T) {
	b := Batch{LastOffsetDelta: 9, Records: []Record{{OffsetDelta: 0}, {OffsetDelta: 4}}}
	enc, err := AppendBatch(nil, b, None)
	if err != nil {
		t.Fatal(err)
	}
	if got := int32(binary.BigEndian.Uint32(enc[23:])); got != 9 {
		t.Fatalf("last offset delta %d, want 9", got)
	}
	if _, err := Decode(enc, Limits{}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("Decode of a batch with gaps: %v, want ErrInvalidRecord", err)
	}
}

// TestAppendBatchCRC checks the encoded CRC and length independently of
// Decode.
func TestAppendBatchCRC(t *testing.T) {
	for _, c := range allCodecs {
		enc, err := AppendBatch(nil, testBatch(20, plain), c)
		if err != nil {
			t.Fatal(err)
		}
		crc := crc32.Checksum(enc[21:], crc32.MakeTable(crc32.Castagnoli))
		if got := binary.BigEndian.Uint32(enc[17:]); got != crc {
			t.Errorf("%v: CRC field %08x, CRC-32C of bytes 21.. is %08x", c, got, crc)
		}
		if got := int(binary.BigEndian.Uint32(enc[8:])); got != len(enc)-12 {
			t.Errorf("%v: length field %d, want %d", c, got, len(enc)-12)
		}
	}
}

func TestKafkaErrorCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int16
	}{
		{nil, 0},
		{fmt.Errorf("x: %w", ErrCorrupt), 2},
		{fmt.Errorf("x: %w", ErrTooLarge), 10},
		{fmt.Errorf("x: %w", ErrUnsupportedCodec), 76},
		{fmt.Errorf("x: %w", ErrInvalidRecord), 87},
		{fmt.Errorf("x: %w", ErrUnsupportedVersion), 87},
		{errors.New("something else"), -1},
	} {
		if got := KafkaErrorCode(tc.err); got != tc.want {
			t.Errorf("KafkaErrorCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
