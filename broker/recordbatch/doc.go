// Package recordbatch encodes and decodes Kafka record batches (message
// format v2, "magic 2"): the bytes a client puts in a Produce request's
// records field and a broker returns in a Fetch response. Clients that
// negotiate Produce v3+ or Fetch v4+ speak only this format, so it is the
// only one supported; batches with magic 0 or 1 are refused with
// [ErrUnsupportedVersion].
//
// The package is a codec and nothing else: it knows nothing about the log,
// topics or the network. `ferry serve` decodes what producers send with
// [Decode] and frames what consumers fetch with [AppendBatch].
//
// # Layout
//
// All integers are big endian. A batch is:
//
//	offset  size  field
//	     0     8  base offset
//	     8     4  batch length: bytes after this field
//	    12     4  partition leader epoch
//	    16     1  magic (2)
//	    17     4  CRC-32C (Castagnoli) of bytes 21..end
//	    21     2  attributes
//	    23     4  last offset delta
//	    27     8  base timestamp
//	    35     8  max timestamp
//	    43     8  producer ID
//	    51     2  producer epoch
//	    53     4  base sequence
//	    57     4  record count
//	    61     -  records, compressed as a whole when the codec is not None
//
// Attributes:
//
//	bits 0-2  codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd
//	bit  3    timestamp type: 0 create time, 1 log append time
//	bit  4    transactional
//	bit  5    control batch
//	bit  6    has delete horizon (set by compaction)
//
// Each record is (varints are zigzag, as in protobuf's sint32/sint64):
//
//	varint   length of the rest of the record
//	int8     attributes (unused, written as 0)
//	varlong  timestamp delta from the base timestamp
//	varint   offset delta from the base offset
//	varint   key length (-1: null), then the key
//	varint   value length (-1: null), then the value
//	varint   header count, then per header:
//	           varint key length, key, varint value length (-1: null), value
//
// # Safety
//
// Decode treats its input as hostile: every length is checked against the
// bytes present before anything is sliced or allocated, the CRC is checked
// before any field after it is trusted, and decompression is bounded by
// [Limits] so that a small compressed batch cannot make the server allocate
// gigabytes. Every error wraps one of a few sentinels (ErrCorrupt,
// ErrInvalidRecord, ErrTooLarge, ErrUnsupportedVersion, ErrUnsupportedCodec)
// and [KafkaErrorCode] maps each to the error code a Produce response carries.
package recordbatch
