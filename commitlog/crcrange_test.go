package commitlog

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

// TestRangeCRCs checks the combined CRCs against direct ones over random
// spans, including empty ones and spans at both ends.
func TestRangeCRCs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 5000)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	spans := [][2]int{{0, 0}, {0, len(b)}, {len(b), len(b)}, {17, 18}, {4999, 5000}}
	for range 500 {
		s := rng.IntN(len(b) + 1)
		e := s + rng.IntN(len(b)-s+1)
		spans = append(spans, [2]int{s, e})
	}
	got := rangeCRCs(b, spans)
	for i, s := range spans {
		if want := crc32.Checksum(b[s[0]:s[1]], castagnoli); got[i] != want {
			t.Fatalf("span %v: combined CRC %#08x, direct %#08x", s, got[i], want)
		}
	}
}
