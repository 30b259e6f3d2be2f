package recordbatch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// The pools below hold codec state that is expensive to build and safe to
// reuse: a zstd or gzip coder allocates hundreds of kilobytes of tables
// and windows, and a Fetch or Produce can carry many batches. A pooled
// coder is reset before each use and holds no data between uses that
// another caller could see, so the pools are caches, not shared state.
var (
	zstdDecoders = sync.Pool{New: func() any {
		// Concurrency 1: DecodeAll and stream reads run in the caller's
		// goroutine and the decoder starts none of its own, so a decoder
		// the pool drops needs no Close.
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true),
			zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			panic("recordbatch: zstd.NewReader with constant options: " + err.Error())
		}
		return d
	}}
	zstdEncoders = sync.Pool{New: func() any {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithZeroFrames(true))
		if err != nil {
			panic("recordbatch: zstd.NewWriter with constant options: " + err.Error())
		}
		return e
	}}
	gzipReaders = sync.Pool{New: func() any { return new(gzipReader) }}
	gzipWriters = sync.Pool{New: func() any { return gzip.NewWriter(nil) }}
	lz4Readers  = sync.Pool{New: func() any { return &lz4Reader{r: lz4.NewReader(nil)} }}
	lz4Writers  = sync.Pool{New: func() any { return lz4.NewWriter(nil) }}
)

// gzipReader keeps the bytes.Reader a gzip.Reader reads from with it, so a
// pooled use allocates neither.
type gzipReader struct {
	z   gzip.Reader
	src bytes.Reader
}

type lz4Reader struct {
	r   *lz4.Reader
	src bytes.Reader
}

// xerialMagic starts snappy data framed the way the Java client (and
// franz-go) write it: the magic, a version and a compatible version (both
// int32 1), then chunks, each an int32 length and a raw snappy block.
var xerialMagic = []byte{0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0}

// zstdMaxWindow is the largest zstd window decoded as a stream: the
// reference encoder's levels 1 to 19 stay within it (the Java client's
// default level 3 uses 2 MiB), and a pooled decoder keeps a buffer of its
// last window, so this bounds what the pool holds per decoder.
const zstdMaxWindow = 8 << 20

const (
	xerialHeaderSize = 16
	// xerialChunk is the uncompressed chunk size the Java client writes.
	xerialChunk = 32 << 10
)

// decompress returns src decompressed with c, failing with ErrTooLarge as
// soon as the output would pass limit bytes.
func decompress(c Codec, src []byte, limit int) ([]byte, error) {
	var out []byte
	var err error
	switch c {
	case Gzip:
		out, err = gunzip(src, limit)
	case Snappy:
		out, err = unsnappy(src, limit)
	case LZ4:
		out, err = unlz4(src, limit)
	case Zstd:
		out, err = unzstd(src, limit)
	default:
		return nil, errUnsupportedCodec(c)
	}
	switch {
	case err == ErrTooLarge: //nolint:errorlint // the bare sentinel: say which limit
		return nil, fmt.Errorf("%w: %s records decompress to more than the %d bytes left of the request's decompression limit", ErrTooLarge, c, limit)
	case errors.Is(err, ErrTooLarge):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, c, err)
	}
	return out, nil
}

// readBounded reads r to EOF into a buffer of initial capacity hint that
// doubles as needed but never grows past limit+1 bytes, and fails with
// ErrTooLarge once more than limit bytes arrive: io.ReadAll through an
// io.LimitReader, with the buffer's growth bounded too.
func readBounded(r io.Reader, hint, limit int) ([]byte, error) {
	buf := make([]byte, 0, min(max(hint, 512), limit+1))
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				return nil, ErrTooLarge
			}
			buf = slices.Grow(buf, min(cap(buf), limit+1-len(buf)))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			return nil, ErrTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

func gunzip(src []byte, limit int) ([]byte, error) {
	g := gzipReaders.Get().(*gzipReader)
	defer gzipReaders.Put(g)
	g.src.Reset(src)
	defer g.src.Reset(nil)
	if err := g.z.Reset(&g.src); err != nil {
		return nil, err
	}
	// The trailer's ISIZE is the uncompressed size mod 2^32: a good first
	// guess for the buffer. A false one costs nothing past limit: a stream
	// shorter than it claims fails its size check, a longer one grows
	// the buffer as usual.
	hint := 0
	if len(src) >= 4 {
		hint = int(binary.LittleEndian.Uint32(src[len(src)-4:])) + 1
	}
	return readBounded(&g.z, hint, limit)
}

func unlz4(src []byte, limit int) ([]byte, error) {
	l := lz4Readers.Get().(*lz4Reader)
	defer lz4Readers.Put(l)
	l.src.Reset(src)
	defer l.src.Reset(nil)
	l.r.Reset(&l.src)
	return readBounded(l.r, 2*len(src), limit)
}

// unzstd decodes a frame that declares its size (as franz-go and
// librdkafka write them) with DecodeAll into one exact buffer, refusing it
// before allocating if the size is over limit. Anything else (the Java
// client streams frames without a size; a frame may be followed by more)
// is decoded as a stream into a buffer readBounded grows: DecodeAll left
// to grow its own output appends its way up by 1.25x steps, allocating
// about five times the final size in all.
func unzstd(src []byte, limit int) ([]byte, error) {
	d := zstdDecoders.Get().(*zstd.Decoder)
	defer zstdDecoders.Put(d)
	var h zstd.Header
	if err := h.Decode(src); err == nil && h.HasFCS {
		if h.FrameContentSize > uint64(limit) {
			return nil, ErrTooLarge
		}
		if err := d.ResetWithOptions(nil, zstd.WithDecoderMaxMemory(max(h.FrameContentSize, 1))); err != nil {
			return nil, err
		}
		out, err := d.DecodeAll(src, nil)
		// More output than declared means more frames, and a window
		// larger than the frame (allowed, if odd) trips the same bound:
		// the stream below handles both.
		if !errors.Is(err, zstd.ErrDecoderSizeExceeded) && !errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return out, err
		}
	}
	var r bytes.Reader
	r.Reset(src)
	// For a stream, the bound caps the window (as does zstdMaxWindow),
	// the decoder's only allocation that grows with the input.
	if err := d.ResetWithOptions(&r, zstd.WithDecoderMaxMemory(uint64(limit)+1)); err != nil {
		return nil, err
	}
	defer d.Reset(nil) //nolint:errcheck // only drops the reference to src
	out, err := readBounded(d, 2*len(src), limit)
	if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
		var h zstd.Header
		if h.Decode(src) == nil && h.WindowSize > uint64(min(limit, zstdMaxWindow)) {
			return nil, fmt.Errorf("%w: zstd window of %d bytes: at most %d supported (the limit left is %d)", ErrTooLarge, h.WindowSize, zstdMaxWindow, limit)
		}
		return nil, ErrTooLarge
	}
	return out, err
}

// unsnappy decodes a raw snappy block or xerial framed chunks. Snappy
// blocks state their decoded length up front, so the whole output is
// sized, checked against limit and allocated once before decoding.
func unsnappy(src []byte, limit int) ([]byte, error) {
	if !bytes.HasPrefix(src, xerialMagic) {
		n, err := s2.DecodedLen(src)
		if err != nil {
			return nil, err
		}
		if n > limit {
			return nil, ErrTooLarge
		}
		return s2.Decode(make([]byte, n), src)
	}
	if len(src) < xerialHeaderSize {
		return nil, errors.New("xerial framing: header truncated")
	}
	chunks := src[xerialHeaderSize:]
	total := 0
	for rest := chunks; len(rest) > 0; {
		chunk, next, err := xerialNext(rest)
		if err != nil {
			return nil, err
		}
		n, err := s2.DecodedLen(chunk)
		if err != nil {
			return nil, err
		}
		if total += n; total > limit {
			return nil, ErrTooLarge
		}
		rest = next
	}
	out := make([]byte, total)
	at := 0
	for rest := chunks; len(rest) > 0; {
		chunk, next, _ := xerialNext(rest) // validated above
		d, err := s2.Decode(out[at:], chunk)
		if err != nil {
			return nil, err
		}
		at += len(d)
		rest = next
	}
	return out, nil
}

// xerialNext splits the chunk at the start of b from what follows it.
func xerialNext(b []byte) (chunk, rest []byte, err error) {
	if len(b) < 4 {
		return nil, nil, fmt.Errorf("xerial framing: %d stray bytes where a chunk length belongs", len(b))
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, nil, fmt.Errorf("xerial framing: chunk of %d bytes, %d present", n, len(b)-4)
	}
	return b[4 : 4+n], b[4+n:], nil
}

// appendCompressed compresses src with c and appends the result to dst.
// src may be part of dst's backing array below len(dst): every codec here
// only writes at or past len(dst).
func appendCompressed(dst, src []byte, c Codec) ([]byte, error) {
	switch c {
	case Gzip:
		w := gzipWriters.Get().(*gzip.Writer)
		defer gzipWriters.Put(w)
		return appendStream(dst, src, w)
	case LZ4:
		w := lz4Writers.Get().(*lz4.Writer)
		defer lz4Writers.Put(w)
		return appendStream(dst, src, w)
	case Zstd:
		e := zstdEncoders.Get().(*zstd.Encoder)
		defer zstdEncoders.Put(e)
		return e.EncodeAll(src, dst), nil
	case Snappy:
		dst = append(dst, xerialMagic...)
		dst = binary.BigEndian.AppendUint32(dst, 1) // version
		dst = binary.BigEndian.AppendUint32(dst, 1) // compatible version
		for len(src) > 0 {
			n := min(len(src), xerialChunk)
			dst = slices.Grow(dst, 4+s2.MaxEncodedLen(n))
			at := len(dst)
			block := s2.EncodeSnappy(dst[at+4:cap(dst)], src[:n])
			dst = binary.BigEndian.AppendUint32(dst, uint32(len(block)))
			dst = dst[:at+4+len(block)]
			src = src[n:]
		}
		return dst, nil
	}
	return dst, errUnsupportedCodec(c)
}

// streamWriter is a compressor writing to an io.Writer (gzip, lz4).
type streamWriter interface {
	io.WriteCloser
	Reset(io.Writer)
}

// appender is an io.Writer appending to a byte slice.
type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

func appendStream(dst, src []byte, w streamWriter) ([]byte, error) {
	a := appender{b: dst}
	w.Reset(&a)
	defer w.Reset(nil)
	if _, err := w.Write(src); err != nil {
		return dst, err
	}
	if err := w.Close(); err != nil {
		return dst, err
	}
	return a.b, nil
}
