package recordbatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"testing"
	"unsafe"
)

// fuzzLimits are small so that the allocation bound below means
// something.
var fuzzLimits = Limits{MaxBatchBytes: 1 << 20, MaxDecompressedBytes: 1 << 20, MaxRecords: 2000}

// fuzzAllocBound is what one Decode under fuzzLimits may allocate for
// input of n bytes: decompression buffers (up to three times the limit,
// see Limits), the record and header slices the limits cap, header keys
// and batch structs (bounded by the input or the decompressed bytes), and
// the codecs' working memory (zstd's window buffer, lz4's blocks of up to
// 4 MiB, gzip's tables; fresh after a GC empties the pools).
func fuzzAllocBound(n int) uint64 {
	lim := fuzzLimits
	records := lim.MaxRecords * int(unsafe.Sizeof(Record{}))
	headers := lim.MaxRecords * int(unsafe.Sizeof(Header{}))
	return uint64(3*lim.MaxDecompressedBytes + records + headers + 4*(n+lim.MaxDecompressedBytes) + 16<<20)
}

// FuzzDecode: Decode never panics, never allocates past the limits,
// returns errors that wrap a sentinel, and whatever it accepts re-encodes
// (AppendBatch with None) and decodes to the same batches. With reseal
// set, the CRCs of the input's batches are fixed up first: a mutated
// batch almost never has a matching CRC, so without this the fuzzer
// would hardly get past the CRC check to the records and codecs.
func FuzzDecode(f *testing.F) {
	for _, c := range allCodecs {
		for _, b := range []Batch{
			testBatch(1, plain),
			testBatch(5, func(i int) Record { return Record{Key: nil, Value: []byte{}, Headers: []Header{{Key: "k"}}} }),
			testBatch(40, plain),
		} {
			f.Add(encode(f, b, c), false)
			f.Add(encode(f, b, c), true)
		}
		two := encode(f, testBatch(2, plain), c)
		f.Add(append(two, encode(f, testBatch(3, plain), None)...), true)
	}
	f.Add([]byte{}, false)
	f.Add(rawBatch(None, 1, []byte{14, 0, 0, 0, 1, 1, 0, 0}), true)

	f.Fuzz(func(t *testing.T, data []byte, reseal bool) {
		if reseal {
			data = resealAll(data)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		batches, err := Decode(data, fuzzLimits)
		runtime.ReadMemStats(&after)
		if alloc, bound := after.TotalAlloc-before.TotalAlloc, fuzzAllocBound(len(data)); alloc > bound {
			t.Fatalf("Decode of %d bytes allocated %d bytes, bound %d", len(data), alloc, bound)
		}
		if err != nil {
			if batches != nil {
				t.Fatal("batches returned with an error")
			}
			if KafkaErrorCode(err) == KafkaErrorCode(errors.New("")) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		var enc []byte
		for _, b := range batches {
			if enc, err = AppendBatch(enc, b, None); err != nil {
				t.Fatalf("re-encoding an accepted batch: %v", err)
			}
		}
		again, err := Decode(enc, bigLimits)
		if err != nil {
			t.Fatalf("decoding the re-encoded batches: %v", err)
		}
		if len(again) != len(batches) {
			t.Fatalf("%d batches after re-encoding, want %d", len(again), len(batches))
		}
		for i := range batches {
			if again[i].Codec() != None {
				t.Fatalf("batch %d re-encoded with codec %v", i, again[i].Codec())
			}
			equalHeader(t, batches[i], again[i])
			equalRecords(t, batches[i].Records, again[i].Records)
		}
	})
}

// resealAll returns a copy of data with the CRC of every batch whose
// length fits recomputed.
func resealAll(data []byte) []byte {
	data = bytes.Clone(data)
	for pos := 0; len(data)-pos >= headerSize; {
		length := int(int32(binary.BigEndian.Uint32(data[pos+8:])))
		if length < headerSize-lengthPrefix || length > len(data)-pos-lengthPrefix {
			break
		}
		reseal(data[pos : pos+lengthPrefix+length])
		pos += lengthPrefix + length
	}
	return data
}

// TestFuzzAllocBoundHolds checks the bound FuzzDecode uses is not so loose
// that nothing could cross it: a bomb against fuzzLimits allocates well
// below it, and the bound is far below the gigabyte the bombs expand to.
func TestFuzzAllocBoundHolds(t *testing.T) {
	if b := fuzzAllocBound(1 << 20); b > 64<<20 {
		t.Fatalf("bound %d for 1 MiB of input", b)
	}
	data := rawBatch(Gzip, 1, gzipZeros(t, 64<<20))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Decode(data, fuzzLimits)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("err %v, want ErrTooLarge", err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	if bound := fuzzAllocBound(len(data)); alloc > bound {
		t.Fatalf("allocated %d, bound %d", alloc, bound)
	}
}
