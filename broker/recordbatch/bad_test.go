package recordbatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// reseal recomputes the CRC of the batch at the start of b after a test
// changed it, so that the check under test is the one that fires.
func reseal(b []byte) []byte {
	binary.BigEndian.PutUint32(b[17:], crc32.Checksum(b[21:], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

// rawBatch frames payload as the records of a batch with codec c claiming
// count records, with a correct length and CRC.
func rawBatch(c Codec, count int32, payload []byte) []byte {
	b := make([]byte, headerSize, headerSize+len(payload))
	binary.BigEndian.PutUint32(b[8:], uint32(headerSize-lengthPrefix+len(payload)))
	b[16] = 2
	binary.BigEndian.PutUint16(b[21:], uint16(c))
	binary.BigEndian.PutUint32(b[23:], uint32(count-1))
	binary.BigEndian.PutUint32(b[57:], uint32(count))
	return reseal(append(b, payload...))
}

func encode(t testing.TB, b Batch, c Codec) []byte {
	t.Helper()
	enc, err := AppendBatch(nil, b, c)
	if err != nil {
		t.Fatal(err)
	}
	return enc
}

func TestDecodeRefuses(t *testing.T) {
	small := func() []byte { return encode(t, testBatch(3, plain), None) }
	patch := func(f func(b []byte) []byte) []byte { return f(small()) }
	// a record whose offset delta is 1 where 0 belongs
	shifted := patch(func(b []byte) []byte {
		enc := encode(t, Batch{LastOffsetDelta: 1, Records: []Record{{OffsetDelta: 1, Value: []byte("v")}}}, None)
		binary.BigEndian.PutUint32(enc[23:], 0)
		return reseal(enc)
	})
	// a zstd stream (no declared size) with a 16 MiB window
	var bigWindow bytes.Buffer
	zw, _ := zstd.NewWriter(&bigWindow, zstd.WithWindowSize(16<<20), zstd.WithEncoderConcurrency(1))
	zw.Write(bytes.Repeat(encode(t, testBatch(1000, plain), None)[61:], 20)) //nolint:errcheck // to memory
	zw.Close()                                                               //nolint:errcheck
	cases := []struct {
		name string
		data []byte
		lim  Limits
		want error
		msg  string // a part of the error message
	}{
		{"empty", nil, Limits{}, ErrCorrupt, "no batches"},
		{"CRC field flipped", patch(func(b []byte) []byte { b[17] ^= 1; return b }), Limits{}, ErrCorrupt, "CRC-32C mismatch"},
		{"record byte flipped", patch(func(b []byte) []byte { b[len(b)-3] ^= 0x40; return b }), Limits{}, ErrCorrupt, "CRC-32C mismatch"},
		{"attributes flipped", patch(func(b []byte) []byte { b[22] ^= 0x08; return b }), Limits{}, ErrCorrupt, "CRC-32C mismatch"},
		{"magic 0", patch(func(b []byte) []byte { b[16] = 0; return b }), Limits{}, ErrUnsupportedVersion, "magic 0"},
		{"magic 1", patch(func(b []byte) []byte { b[16] = 1; return b }), Limits{}, ErrUnsupportedVersion, "magic 1"},
		{"magic 3", patch(func(b []byte) []byte { b[16] = 3; return b }), Limits{}, ErrUnsupportedVersion, "only record batch format v2"},
		{"codec 5", patch(func(b []byte) []byte { b[22] |= 5; return reseal(b) }), Limits{}, ErrUnsupportedCodec, "codec 5"},
		{"codec 6", patch(func(b []byte) []byte { b[22] |= 6; return reseal(b) }), Limits{}, ErrUnsupportedCodec, "codec 6"},
		{"codec 7", patch(func(b []byte) []byte { b[22] |= 7; return reseal(b) }), Limits{}, ErrUnsupportedCodec, "codec 7"},
		{"count one more", patch(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[57:], 4)
			binary.BigEndian.PutUint32(b[23:], 3)
			return reseal(b)
		}), Limits{}, ErrInvalidRecord, "only 3 records present"},
		{"count one less", patch(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[57:], 2)
			binary.BigEndian.PutUint32(b[23:], 1)
			return reseal(b)
		}), Limits{}, ErrInvalidRecord, "after the last of 2 records"},
		{"count far too high", patch(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[57:], 1000)
			binary.BigEndian.PutUint32(b[23:], 999)
			return reseal(b)
		}), Limits{}, ErrInvalidRecord, "hold at most"},
		{"count zero", patch(func(b []byte) []byte {
			binary.BigEndian.PutUint32(b[57:], 0)
			binary.BigEndian.PutUint32(b[23:], 0xffffffff)
			return reseal(b)
		}), Limits{}, ErrInvalidRecord, "at least one record"},
		{"count negative", patch(func(b []byte) []byte { binary.BigEndian.PutUint32(b[57:], 0x80000000); return reseal(b) }), Limits{}, ErrInvalidRecord, "record count -2147483648"},
		{"last offset delta wrong", patch(func(b []byte) []byte { binary.BigEndian.PutUint32(b[23:], 5); return reseal(b) }), Limits{}, ErrInvalidRecord, "last offset delta 5 with 3 records"},
		{"offset deltas not from 0", shifted, Limits{}, ErrInvalidRecord, "offset deltas 0, 1, ..., n-1"},
		{"batch length below header", patch(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 48); return b }), Limits{}, ErrCorrupt, "at least 49 bytes"},
		{"batch length negative", patch(func(b []byte) []byte { binary.BigEndian.PutUint32(b[8:], 0xffffffff); return b }), Limits{}, ErrCorrupt, "batch length -1"},
		{"garbage after the batch", append(small(), 1, 2, 3), Limits{}, ErrCorrupt, "batch 1 at byte"},
		{"record length past the batch", rawBatch(None, 1, []byte{40, 0, 0, 0, 1, 1, 0}), Limits{}, ErrCorrupt, "record length 20"},
		{"record length short of its fields", rawBatch(None, 1, []byte{8, 0, 0, 0, 1, 1, 0, 0}), Limits{}, ErrCorrupt, "bad value length varint"},
		{"record length longer than its fields", rawBatch(None, 1, []byte{14, 0, 0, 0, 1, 1, 0, 0}), Limits{}, ErrCorrupt, "record length says 7 bytes, its fields take 6"},
		{"key length -2", rawBatch(None, 1, []byte{12, 0, 0, 0, 3, 1, 0}), Limits{}, ErrCorrupt, "key length -2"},
		{"bad varint", rawBatch(None, 1, []byte{12, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), Limits{}, ErrCorrupt, "bad timestamp delta varint"},
		{"offset delta past 32 bits", rawBatch(None, 1, []byte{18, 0, 0, 0x80, 0x80, 0x80, 0x80, 0x20, 1, 1, 0}), Limits{}, ErrCorrupt, "does not fit in 32 bits"},
		{"null header key", rawBatch(None, 1, []byte{16, 0, 0, 0, 1, 1, 2, 1, 1}), Limits{}, ErrCorrupt, "null key"},
		{"header count negative", rawBatch(None, 1, []byte{12, 0, 0, 0, 1, 1, 1}), Limits{}, ErrCorrupt, "header count -1"},
		{"header count past the bytes", rawBatch(None, 1, []byte{12, 0, 0, 0, 1, 1, 20}), Limits{}, ErrCorrupt, "header count 10"},
		{"batch over MaxBatchBytes", small(), Limits{MaxBatchBytes: 100}, ErrTooLarge, "at most 100 allowed"},
		{"records over MaxRecords", small(), Limits{MaxRecords: 2}, ErrTooLarge, "the limit is 2 per request"},
		{"records over MaxRecords across batches", append(small(), small()...), Limits{MaxRecords: 5}, ErrTooLarge, "3 are used by earlier batches"},
		{"headers over MaxRecords", encode(t, testBatch(1, func(int) Record { return Record{Headers: make([]Header, 5)} }), None), Limits{MaxRecords: 4}, ErrTooLarge, "5 headers: only 4 more allowed"},
		{"decompressed over the limit", encode(t, testBatch(100, plain), Zstd), Limits{MaxDecompressedBytes: 100}, ErrTooLarge, "more than the 100 bytes"},
		{"zstd window over 8 MiB", rawBatch(Zstd, 1, bigWindow.Bytes()), Limits{}, ErrTooLarge, "zstd window of 16777216 bytes: at most 8388608"},
		{"gzip garbage", rawBatch(Gzip, 1, []byte("not gzip at all")), Limits{}, ErrCorrupt, "gzip"},
		{"snappy garbage", rawBatch(Snappy, 1, []byte{5, 0xff, 0xff}), Limits{}, ErrCorrupt, "snappy"},
		{"xerial truncated chunk", rawBatch(Snappy, 1, append(append([]byte{}, xerialMagic...), 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 7)), Limits{}, ErrCorrupt, "chunk of 256 bytes, 1 present"},
		{"lz4 garbage", rawBatch(LZ4, 1, []byte("not an lz4 frame")), Limits{}, ErrCorrupt, "lz4"},
		{"zstd garbage", rawBatch(Zstd, 1, []byte("not a zstd frame")), Limits{}, ErrCorrupt, "zstd"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Decode(tc.data, tc.lim)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
			if got != nil {
				t.Fatalf("%d batches returned with an error", len(got))
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
			if KafkaErrorCode(err) != KafkaErrorCode(tc.want) {
				t.Fatalf("KafkaErrorCode %d, want %d", KafkaErrorCode(err), KafkaErrorCode(tc.want))
			}
		})
	}
}

// TestDecodeTruncated cuts two concatenated batches at every byte: every
// cut must be refused as corrupt, never panic, never be taken for fewer
// batches.
func TestDecodeTruncated(t *testing.T) {
	for _, c := range allCodecs {
		data := encode(t, testBatch(2, plain), c)
		first := len(data)
		data = append(data, encode(t, testBatch(3, plain), c)...)
		for n := range len(data) {
			if n == first {
				continue // the first batch alone is whole
			}
			_, err := Decode(data[:n], Limits{})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%v cut at %d of %d: err %v, want ErrCorrupt", c, n, len(data), err)
			}
		}
	}
}

// TestDecodeBitFlips flips every bit of a batch of each codec: the CRC
// check must catch each, whatever the flip does to lengths.
func TestDecodeBitFlips(t *testing.T) {
	for _, c := range allCodecs {
		orig := encode(t, testBatch(4, plain), c)
		for i := range len(orig) * 8 {
			if i/8 < 8 || i/8 >= 12 && i/8 < 16 {
				continue // base offset and leader epoch: the CRC does not cover them (see below)
			}
			data := bytes.Clone(orig)
			data[i/8] ^= 1 << (i % 8)
			_, err := Decode(data, Limits{})
			if err == nil {
				t.Fatalf("%v: flipping bit %d went unnoticed", c, i)
			}
			if KafkaErrorCode(err) == KafkaErrorCode(errors.New("")) {
				t.Fatalf("%v: flipping bit %d: error %v wraps no sentinel", c, i, err)
			}
		}
		// The broker rewrites the base offset and leader epoch, so Kafka
		// leaves them out of the CRC: changed, they decode as changed.
		data := bytes.Clone(orig)
		data[7] ^= 1
		data[15] ^= 1
		got, err := Decode(data, Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if got[0].BaseOffset != 1234^1 || got[0].PartitionLeaderEpoch != 7^1 {
			t.Fatalf("base offset %d, leader epoch %d", got[0].BaseOffset, got[0].PartitionLeaderEpoch)
		}
	}
}

// zeros is an io.Reader of n zero bytes that holds none of them.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), z.n)]
	clear(p)
	z.n -= int64(len(p))
	return len(p), nil
}

const gib = 1 << 30

// bombs compresses 1 GiB of zeros with each codec, never holding the
// gigabyte. Gzip and lz4 streams are built by repeating a compressed
// segment (compressing a real gigabyte takes a minute under -race);
// TestBombBuilders checks the repetition yields valid streams.
func bombs(t *testing.T) map[string][]byte {
	t.Helper()
	out := map[string][]byte{
		"gzip": rawBatch(Gzip, 1, gzipZeros(t, gib)),
		"lz4":  rawBatch(LZ4, 1, lz4Zeros(t, gib)),
	}
	var zs bytes.Buffer
	zw, _ := zstd.NewWriter(&zs, zstd.WithEncoderConcurrency(1))
	if _, err := io.Copy(zw, &zeros{gib}); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	out["zstd"] = rawBatch(Zstd, 1, bytes.Clone(zs.Bytes()))
	zs.Reset()
	zw.ResetContentSize(&zs, gib) // this frame declares its 1 GiB up front
	if _, err := io.Copy(zw, &zeros{gib}); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	out["zstd declaring its size"] = rawBatch(Zstd, 1, zs.Bytes())

	// Snappy states the decoded length first: a block may claim 1 GiB
	// and hold nothing.
	claim := binary.AppendUvarint(nil, gib)
	out["snappy claiming 1 GiB"] = rawBatch(Snappy, 1, append(claim, 0, 0, 0))
	// A xerial stream of real chunks of zeros: snappy's best ratio is
	// about 21:1, so this is a bomb only against a small limit.
	chunk := s2.EncodeSnappy(nil, make([]byte, xerialChunk))
	x := append(append([]byte{}, xerialMagic...), 0, 0, 0, 1, 0, 0, 0, 1)
	for range 1024 { // 32 MiB
		x = binary.BigEndian.AppendUint32(x, uint32(len(chunk)))
		x = append(x, chunk...)
	}
	out["snappy xerial 32 MiB"] = rawBatch(Snappy, 1, x)
	return out
}

// gzipZeros returns a gzip stream of n zeros (n a multiple of 1 MiB): the
// deflate of one MiB after a sync flush refers only to zeros before it,
// so it can be repeated.
func gzipZeros(t testing.TB, n int64) []byte {
	var raw bytes.Buffer
	fw, err := flate.NewWriter(&raw, flate.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	mib := make([]byte, 1<<20)
	fw.Write(mib) //nolint:errcheck // writes to memory
	fw.Flush()    //nolint:errcheck
	first := raw.Len()
	fw.Write(mib)                                        //nolint:errcheck
	fw.Flush()                                           //nolint:errcheck
	out := []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff} // gzip header
	out = append(out, raw.Bytes()[:first]...)
	crc := crc32.Update(0, crc32.IEEETable, mib)
	for range n>>20 - 1 {
		out = append(out, raw.Bytes()[first:]...)
		crc = crc32.Update(crc, crc32.IEEETable, mib)
	}
	out = append(out, 1, 0, 0, 0xff, 0xff) // final, empty stored block
	out = binary.LittleEndian.AppendUint32(out, crc)
	return binary.LittleEndian.AppendUint32(out, uint32(n))
}

// lz4Zeros returns an lz4 frame of n zeros (n a multiple of 4 MiB) by
// repeating one 4 MiB block.
func lz4Zeros(t testing.TB, n int64) []byte {
	var buf bytes.Buffer
	w := lz4.NewWriter(&buf)
	if err := w.Apply(lz4.BlockSizeOption(lz4.Block4Mb), lz4.ChecksumOption(false)); err != nil {
		t.Fatal(err)
	}
	w.Write(make([]byte, 4<<20)) //nolint:errcheck // writes to memory
	w.Close()                    //nolint:errcheck
	frame := buf.Bytes()
	flg := frame[4]
	hdr := 7 // magic, FLG, BD, header checksum
	if flg&0x08 != 0 {
		hdr += 8 // content size
	}
	if flg&0x01 != 0 {
		hdr += 4 // dictionary ID
	}
	if flg&0x04 != 0 || flg&0x10 != 0 {
		t.Fatalf("lz4 frame flags %#x: want no checksums", flg)
	}
	size := int(binary.LittleEndian.Uint32(frame[hdr:]) &^ (1 << 31))
	block := frame[hdr : hdr+4+size]
	out := append([]byte{}, frame[:hdr]...)
	for range n >> 22 {
		out = append(out, block...)
	}
	return append(out, 0, 0, 0, 0) // end mark
}

// TestBombBuilders checks that the repeated-segment streams are valid, on
// a size small enough to decompress.
func TestBombBuilders(t *testing.T) {
	const n = 16 << 20
	count := func(r io.Reader) int64 {
		got, err := io.Copy(io.Discard, r)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	zr, err := gzip.NewReader(bytes.NewReader(gzipZeros(t, n)))
	if err != nil {
		t.Fatal(err)
	}
	if got := count(zr); got != n {
		t.Fatalf("gzip stream holds %d bytes, want %d", got, n)
	}
	if got := count(lz4.NewReader(bytes.NewReader(lz4Zeros(t, n)))); got != n {
		t.Fatalf("lz4 stream holds %d bytes, want %d", got, n)
	}
}

// TestDecodeBombs: each bomb is refused with ErrTooLarge having allocated
// about the limit, not the gigabyte it expands to.
func TestDecodeBombs(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses 1 GiB per codec")
	}
	const limit = 8 << 20
	lim := Limits{MaxBatchBytes: 8 << 20, MaxDecompressedBytes: limit}
	for name, data := range bombs(t) {
		t.Run(name, func(t *testing.T) {
			t.Logf("%d bytes compressed", len(data))
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err := Decode(data, lim)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("err %v, want ErrTooLarge", err)
			}
			if KafkaErrorCode(err) != 10 {
				t.Fatalf("KafkaErrorCode %d, want 10 (MESSAGE_TOO_LARGE)", KafkaErrorCode(err))
			}
			// Buffers doubling up to the limit allocate up to three
			// times it; the codecs' working memory is the rest: a zstd
			// stream's 8 MiB window and decoder tables (a cold decoder:
			// runtime.GC, and -race, empty pools), lz4's 4 MiB blocks.
			// What matters is that none of it scales with the 1 GiB.
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("allocated %d bytes against a limit of %d", alloc, limit)
			if bound := uint64(3*limit + 16<<20); alloc > bound {
				t.Fatalf("allocated %d bytes, bound %d", alloc, bound)
			}
		})
	}
}
