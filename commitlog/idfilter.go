package commitlog

import (
	"encoding/binary"

	"github.com/ferrymq/ferry"
)

// idFilter is a blocked Bloom filter of message IDs: each ID sets
// filterBits bits inside one 512-bit block, so a query reads one cache
// line. It answers "certainly not added" or "maybe added"; the dedup
// window asks it before probing its map, because almost every appended ID
// is new and a large map probe is a cache miss.
type idFilter struct {
	blocks [][8]uint64
}

const (
	filterBits        = 6
	filterBitsPerID   = 10 // about 1% false positives
	filterMinCapacity = 4096
)

func newIDFilter(capacity int) *idFilter {
	n := max(capacity*filterBitsPerID/512, 1)
	return &idFilter{blocks: make([][8]uint64, n)}
}

// idHash mixes an ID's 16 bytes into 64 bits (IDs need not be random:
// callers may choose their own).
func idHash(id ferry.ID) uint64 {
	h := binary.LittleEndian.Uint64(id[:8])*0x9E3779B97F4A7C15 ^ binary.LittleEndian.Uint64(id[8:])
	h ^= h >> 31
	h *= 0xBF58476D1CE4E5B9
	h ^= h >> 29
	h *= 0x94D049BB133111EB
	return h ^ h>>32
}

func (f *idFilter) block(h uint64) *[8]uint64 {
	return &f.blocks[(h>>32)*uint64(len(f.blocks))>>32]
}

// reset empties the filter.
func (f *idFilter) reset() { clear(f.blocks) }

func (f *idFilter) add(h uint64) {
	b := f.block(h)
	for i := range filterBits {
		bit := (h >> (5 * i)) & 511
		b[bit>>6] |= 1 << (bit & 63)
	}
}

func (f *idFilter) mayContain(h uint64) bool {
	b := f.block(h)
	for i := range filterBits {
		bit := (h >> (5 * i)) & 511
		if b[bit>>6]&(1<<(bit&63)) == 0 {
			return false
		}
	}
	return true
}
