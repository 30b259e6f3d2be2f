package commitlog

import (
	"hash/crc32"
	"slices"
	"sort"
	"sync"
)

// Searching the bytes after a bad batch for a valid batch (see
// nextValidBatch) checks a CRC at every position where a batch header
// could start. Computed one by one, those CRCs cost the sum of the
// candidates' lengths: quadratic in a payload full of header-like bytes.
// rangeCRCs computes them all from one pass instead: with P(i) the CRC of
// b[:i], the CRC of b[s:e] is P(e) xor Z(e-s, P(s)), where Z(n, c) is the
// CRC register c carried through n zero bytes (CRC is linear over GF(2);
// this is zlib's crc32_combine). Z takes O(log n) table lookups.

// gf2Matrix is a linear map on 32-bit CRC registers: column i is the image
// of bit i.
type gf2Matrix [32]uint32

func (m *gf2Matrix) times(v uint32) uint32 {
	var r uint32
	for i := 0; v != 0; i, v = i+1, v>>1 {
		if v&1 != 0 {
			r ^= m[i]
		}
	}
	return r
}

func (m *gf2Matrix) square() gf2Matrix {
	var sq gf2Matrix
	for i := range m {
		sq[i] = m.times(m[i])
	}
	return sq
}

// zeroShifter carries CRC registers through runs of zero bytes.
type zeroShifter struct {
	// pow[k] carries a register through 2^k zero bytes, as four tables
	// of the images of each byte of the register.
	pow [40][4][256]uint32
}

func newZeroShifter(poly uint32) *zeroShifter {
	// One zero bit: shift right, and fold the polynomial in when the low
	// bit falls out (the reflected form hash/crc32 uses).
	var bit gf2Matrix
	bit[0] = poly
	for i := 1; i < 32; i++ {
		bit[i] = 1 << (i - 1)
	}
	z := &zeroShifter{}
	m := bit.square() // 2 bits
	m = m.square()    // 4 bits
	m = m.square()    // 8 bits: one byte
	for k := range z.pow {
		for j := range 4 {
			for v := range 256 {
				z.pow[k][j][v] = m.times(uint32(v) << (8 * j))
			}
		}
		m = m.square()
	}
	return z
}

// shift returns the CRC of a ‖ n zero bytes given crc = CRC(a), without
// the final xor that hash/crc32 applies (see rangeCRC for how it cancels).
func (z *zeroShifter) shift(crc uint32, n int64) uint32 {
	for k := 0; n != 0; k, n = k+1, n>>1 {
		if n&1 != 0 {
			t := &z.pow[k]
			crc = t[0][byte(crc)] ^ t[1][byte(crc>>8)] ^ t[2][byte(crc>>16)] ^ t[3][byte(crc>>24)]
		}
	}
	return crc
}

// castagnoliZeros is built on first use (256 KiB of tables).
var castagnoliZeros = sync.OnceValue(func() *zeroShifter { return newZeroShifter(crc32.Castagnoli) })

// rangeCRCs returns crc32c(b[s:e]) for every [s, e) in spans, in one pass
// over b.
func rangeCRCs(b []byte, spans [][2]int) []uint32 {
	// Every position a span starts or ends at, in order.
	at := make([]int, 0, 2*len(spans))
	for _, s := range spans {
		at = append(at, s[0], s[1])
	}
	sort.Ints(at)
	at = slices.Compact(at)
	prefix := make([]uint32, len(at))
	var crc uint32
	pos := 0
	for i, p := range at {
		crc = crc32.Update(crc, castagnoli, b[pos:p])
		pos = p
		prefix[i] = crc
	}
	crcAt := func(p int) uint32 {
		i, _ := slices.BinarySearch(at, p)
		return prefix[i]
	}
	out := make([]uint32, len(spans))
	for i, s := range spans {
		out[i] = rangeCRC(crcAt(s[0]), crcAt(s[1]), int64(s[1]-s[0]))
	}
	return out
}

// rangeCRC derives CRC(y) from CRC(x) and CRC(x‖y), len(y) = n.
// hash/crc32 computes CRC(m) = ^R(^0, m), with R the raw register update,
// which is linear: R(c, y) = Z(n, c) ^ R(0, y). Then
// CRC(x‖y) = ^(Z(n, ^CRC(x)) ^ R(0, y)) and CRC(y) = ^(Z(n, ^0) ^ R(0, y)),
// so CRC(y) = CRC(x‖y) ^ Z(n, ^CRC(x)) ^ Z(n, ^0) = CRC(x‖y) ^ Z(n, CRC(x)).
func rangeCRC(prefix, whole uint32, n int64) uint32 {
	return whole ^ castagnoliZeros().shift(prefix, n)
}
