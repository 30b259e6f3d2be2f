package commitlog

import (
	"fmt"
	"time"

	"github.com/ferrymq/ferry"
)

// Topic limits.
const (
	MaxTopicNameLen = 200  // bytes; topic names become parts of derived names (DLQ, delay topics)
	MaxPartitions   = 4096 // per topic; each partition has an in-memory index and tail
)

// TopicConfig configures a topic. Zero values mean the documented default.
type TopicConfig struct {
	// Partitions is the number of partitions (default 1, at most
	// MaxPartitions). It cannot change after creation because it decides
	// which partition each key lives in.
	Partitions int
	// RetentionAge deletes messages appended longer ago than this (0: keep
	// forever). Age counts from the append, whatever Time a message carries.
	RetentionAge time.Duration
	// RetentionBytes bounds each partition's size; the oldest messages go
	// first (0: unbounded).
	RetentionBytes int64
	// Compact keeps only the latest message of each key (and drops
	// tombstones after TombstoneRetention).
	Compact bool
	// TombstoneRetention is how long after its append a tombstone survives
	// compaction, so that consumers see the delete (default 24h).
	TombstoneRetention time.Duration
	// DedupWindow is how long after its append a message ID is remembered
	// for producer deduplication (default 2m; negative disables). It counts
	// from the append, not from the Time the message carries.
	DedupWindow time.Duration
	// DedupMaxIDs bounds the IDs remembered per topic (default 100000).
	DedupMaxIDs int
}

func (c TopicConfig) withDefaults() TopicConfig {
	if c.Partitions == 0 {
		c.Partitions = 1
	}
	if c.TombstoneRetention == 0 {
		c.TombstoneRetention = 24 * time.Hour
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = 2 * time.Minute
	}
	if c.DedupMaxIDs == 0 {
		c.DedupMaxIDs = 100_000
	}
	return c
}

func (c TopicConfig) validate() error {
	switch {
	case c.Partitions < 1 || c.Partitions > MaxPartitions:
		return fmt.Errorf("%w: %d partitions: want 1 to %d", ferry.ErrInvalidArgument, c.Partitions, MaxPartitions)
	case c.RetentionAge < 0:
		return fmt.Errorf("%w: negative retention age %s", ferry.ErrInvalidArgument, c.RetentionAge)
	case c.RetentionBytes < 0:
		return fmt.Errorf("%w: negative retention size %d", ferry.ErrInvalidArgument, c.RetentionBytes)
	case c.TombstoneRetention < 0:
		return fmt.Errorf("%w: negative tombstone retention %s", ferry.ErrInvalidArgument, c.TombstoneRetention)
	case c.DedupMaxIDs < 0 || c.DedupMaxIDs > 10_000_000:
		return fmt.Errorf("%w: dedup window of %d IDs: want 0 to 10000000", ferry.ErrInvalidArgument, c.DedupMaxIDs)
	}
	return nil
}

// ValidateTopicName checks a topic name: 1 to MaxTopicNameLen bytes of
// ASCII letters, digits, '.', '_' and '-', not "." or "..", not starting
// with "__" (reserved for ferry's own topics).
func ValidateTopicName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty topic name", ferry.ErrInvalidArgument)
	}
	if len(name) > MaxTopicNameLen {
		return fmt.Errorf("%w: topic name of %d bytes: at most %d allowed", ferry.ErrInvalidArgument, len(name), MaxTopicNameLen)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("%w: topic name %q is not allowed", ferry.ErrInvalidArgument, name)
	}
	if len(name) >= 2 && name[:2] == "__" {
		return fmt.Errorf("%w: topic name %q: names starting with \"__\" are reserved", ferry.ErrInvalidArgument, name)
	}
	for i, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: topic name %q has %q at byte %d: allowed are ASCII letters, digits, '.', '_' and '-'", ferry.ErrInvalidArgument, name, c, i)
		}
	}
	return nil
}
