package recordbatch

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchBatch is 1000 records with 256-byte values of JSON-ish text, so
// that compression has something realistic to do.
func benchBatch() Batch {
	rng := rand.New(rand.NewPCG(3, 4))
	words := []string{"order", "id", "customer", "amount", "currency", "EUR", "status", "shipped", "true", "false"}
	return testBatch(1000, func(i int) Record {
		v := make([]byte, 0, 256)
		for len(v) < 256 {
			v = fmt.Appendf(v, `"%s":%d,`, words[rng.IntN(len(words))], rng.IntN(100000))
		}
		return Record{
			TimestampDelta: int64(i),
			Key:            fmt.Appendf(nil, "key-%06d", i),
			Value:          v[:256],
			Headers:        []Header{{Key: "ce-type", Value: []byte("order.created")}},
		}
	})
}

// Throughput (MB/s) is of the uncompressed batch for every codec.

func BenchmarkAppendBatch(b *testing.B) {
	batch := benchBatch()
	size := int64(len(encode(b, batch, None)))
	for _, c := range []Codec{None, Zstd} {
		b.Run(c.String(), func(b *testing.B) {
			dst, err := AppendBatch(nil, batch, c)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if dst, err = AppendBatch(dst[:0], batch, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	batch := benchBatch()
	size := int64(len(encode(b, batch, None)))
	for _, c := range []Codec{None, Zstd} {
		b.Run(c.String(), func(b *testing.B) {
			data, err := AppendBatch(nil, batch, c)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decode(data, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
