package recordbatch

import (
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kerr"
)

// The errors Decode and AppendBatch return wrap exactly one of these; test
// with errors.Is. The wrapping message says what was wrong and what is
// allowed.
var (
	// ErrCorrupt: the bytes are not a well-formed batch: truncated, a CRC
	// mismatch, a length or varint that runs past its bounds, or compressed
	// data that does not decompress.
	ErrCorrupt = errors.New("corrupt record batch")
	// ErrInvalidRecord: the batch is intact (its CRC matches) but breaks a
	// rule Kafka enforces on produce: the record count disagrees with the
	// records present, offset deltas are not 0, 1, ..., n-1, or the batch
	// holds no records.
	ErrInvalidRecord = errors.New("invalid record batch")
	// ErrTooLarge: a batch, its decompressed records, or their number
	// exceeds the Limits.
	ErrTooLarge = errors.New("record batch too large")
	// ErrUnsupportedVersion: the batch's magic byte is not 2.
	ErrUnsupportedVersion = errors.New("unsupported record batch version")
	// ErrUnsupportedCodec: the batch's codec bits are 5, 6 or 7.
	ErrUnsupportedCodec = errors.New("unsupported compression codec")
)

// KafkaErrorCode returns the Kafka error code a Produce response should
// carry for err, an error from Decode:
//
//	nil                    0 (NONE)
//	ErrCorrupt             CORRUPT_MESSAGE (2)
//	ErrTooLarge            MESSAGE_TOO_LARGE (10)
//	ErrUnsupportedCodec    UNSUPPORTED_COMPRESSION_TYPE (76)
//	ErrInvalidRecord       INVALID_RECORD (87)
//	ErrUnsupportedVersion  INVALID_RECORD (87)
//	anything else          UNKNOWN_SERVER_ERROR (-1)
//
// ErrUnsupportedVersion maps to INVALID_RECORD, not UNSUPPORTED_VERSION:
// that is what Kafka answers when a Produce v3+ request carries magic 0 or
// 1 (ProduceRequest.validateRecords), and UNSUPPORTED_VERSION in a
// partition response would tell the client its request version, which was
// fine, is not.
func KafkaErrorCode(err error) int16 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrCorrupt):
		return kerr.CorruptMessage.Code
	case errors.Is(err, ErrTooLarge):
		return kerr.MessageTooLarge.Code
	case errors.Is(err, ErrUnsupportedCodec):
		return kerr.UnsupportedCompressionType.Code
	case errors.Is(err, ErrInvalidRecord), errors.Is(err, ErrUnsupportedVersion):
		return kerr.InvalidRecord.Code
	}
	return kerr.UnknownServerError.Code
}

func errUnsupportedCodec(c Codec) error {
	return fmt.Errorf("%w: codec %d: supported are 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd", ErrUnsupportedCodec, int(c))
}
