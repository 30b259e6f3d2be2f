package commitlog

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// Durability says when an append is acknowledged relative to fsync.
type Durability int

const (
	// DurabilityAlways acknowledges an append only after the fsync that
	// covers it (group commit shares one fsync among all waiting appends).
	// A crash or power loss never loses an acknowledged message. Default.
	DurabilityAlways Durability = iota
	// DurabilityInterval acknowledges after the write reaches the OS and
	// fsyncs every SyncInterval. A power loss can lose up to one interval
	// of acknowledged messages (a process crash loses nothing). This is
	// what NATS JetStream does by default.
	DurabilityInterval
	// DurabilityNone never fsyncs except when a segment rolls and on Close.
	// For tests and throwaway data.
	DurabilityNone
)

// String returns the mode's name as ParseDurability accepts it.
func (d Durability) String() string {
	switch d {
	case DurabilityAlways:
		return "always"
	case DurabilityInterval:
		return "interval"
	case DurabilityNone:
		return "none"
	}
	return fmt.Sprintf("durability(%d)", int(d))
}

// ParseDurability parses "always", "interval" or "none".
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "always":
		return DurabilityAlways, nil
	case "interval":
		return DurabilityInterval, nil
	case "none":
		return DurabilityNone, nil
	}
	return 0, fmt.Errorf("%w: durability %q: want always, interval or none", ferry.ErrInvalidArgument, s)
}

type cfg struct {
	fs              vfs.FS
	durability      Durability
	syncInterval    time.Duration
	segmentBytes    int64
	maxMessageBytes int
	maxBatchBytes   int
	queueDepth      int
	queueBytes      int64
	maxGroupBytes   int
	maxInflight     int // groups written and waiting for an fsync (DurabilityAlways)
	now             func() time.Time
	logger          *slog.Logger
	observer        Observer
	readOnly        bool
	repair          bool
	cleanInterval   time.Duration
	noZeroAhead     bool
	fullCheckpoints bool // tests and benchmarks: every checkpoint a base (as before deltas)
	maxOpenSegments int
}

func defaultCfg() cfg {
	return cfg{
		fs:              vfs.Default,
		durability:      DurabilityAlways,
		syncInterval:    50 * time.Millisecond,
		segmentBytes:    128 << 20,
		maxMessageBytes: 1 << 20,
		maxBatchBytes:   16 << 20,
		queueDepth:      4096,
		queueBytes:      64 << 20,
		maxGroupBytes:   4 << 20,
		maxInflight:     maxInflightGroups,
		now:             time.Now,
		logger:          slog.New(slog.DiscardHandler),
		cleanInterval:   time.Minute,
		maxOpenSegments: 256,
	}
}

// bound is one row of the validation table: every size and duration option
// is checked here, with the reason for its limits.
type bound struct {
	name     string
	val, min int64
	max      int64
	why      string
}

func (c *cfg) validate() error {
	bounds := []bound{
		{"segment size", c.segmentBytes, 1 << 16, 1 << 30, "positions inside a segment are 32-bit, and tiny segments mean a file per handful of batches"},
		{"max message size", int64(c.maxMessageBytes), 1, 64 << 20, "a message is held whole in memory by producers and consumers"},
		{"max batch size", int64(c.maxBatchBytes), 1, 256 << 20, "a batch is written and checksummed as one buffer"},
		{"queue depth", int64(c.queueDepth), 1, 1 << 20, "pending appends hold memory until written"},
		{"max queue bytes", c.queueBytes, 64 << 10, 16 << 30, "queued appends are held in memory until written"},
		{"max group size", int64(c.maxGroupBytes), 4 << 10, 256 << 20, "one group commit is one write buffer"},
		{"sync interval", int64(c.syncInterval), int64(time.Millisecond), int64(time.Minute), "longer intervals risk more acknowledged data on power loss"},
		{"clean interval", int64(c.cleanInterval), int64(time.Millisecond), int64(24 * time.Hour), "the cleaner must run to enforce retention"},
		{"max open segments", int64(c.maxOpenSegments), 2, 1 << 20, "the active segment stays open, and a read needs one more"},
	}
	for _, b := range bounds {
		if b.val < b.min || b.val > b.max {
			return fmt.Errorf("%w: %s %d outside [%d, %d]: %s", ferry.ErrInvalidArgument, b.name, b.val, b.min, b.max, b.why)
		}
	}
	if int64(c.maxBatchBytes) > c.queueBytes {
		return fmt.Errorf("%w: max batch size %d exceeds max queue bytes %d: such a batch could never be queued", ferry.ErrInvalidArgument, c.maxBatchBytes, c.queueBytes)
	}
	if c.maxMessageBytes > c.maxBatchBytes {
		return fmt.Errorf("%w: max message size %d exceeds max batch size %d", ferry.ErrInvalidArgument, c.maxMessageBytes, c.maxBatchBytes)
	}
	// A group commit collects up to maxGroupBytes and then one more batch;
	// all of it must fit in one segment.
	if need := int64(c.maxBatchBytes) + int64(c.maxGroupBytes) + 1<<12; need > c.segmentBytes {
		return fmt.Errorf("%w: max batch size %d plus max group size %d do not fit in a segment of %d bytes", ferry.ErrInvalidArgument, c.maxBatchBytes, c.maxGroupBytes, c.segmentBytes)
	}
	if c.durability < DurabilityAlways || c.durability > DurabilityNone {
		return fmt.Errorf("%w: unknown durability %d", ferry.ErrInvalidArgument, c.durability)
	}
	return nil
}

// Opt configures Open.
type Opt interface{ apply(*cfg) }

type optFunc func(*cfg)

func (f optFunc) apply(c *cfg) { f(c) }

// WithFS sets the filesystem (default: the operating system's).
func WithFS(fs vfs.FS) Opt { return optFunc(func(c *cfg) { c.fs = fs }) }

// WithDurability sets when appends are acknowledged (default
// DurabilityAlways: after fsync).
func WithDurability(d Durability) Opt { return optFunc(func(c *cfg) { c.durability = d }) }

// WithSyncInterval sets the fsync period for DurabilityInterval (default
// 50ms, 1ms to 1m).
func WithSyncInterval(d time.Duration) Opt { return optFunc(func(c *cfg) { c.syncInterval = d }) }

// WithSegmentBytes sets the size at which the log rolls to a new segment
// file (default 128 MiB, 64 KiB to 1 GiB).
func WithSegmentBytes(n int64) Opt { return optFunc(func(c *cfg) { c.segmentBytes = n }) }

// WithMaxMessageBytes sets the largest encoded message accepted (default
// 1 MiB, up to 64 MiB).
func WithMaxMessageBytes(n int) Opt { return optFunc(func(c *cfg) { c.maxMessageBytes = n }) }

// WithMaxBatchBytes sets the largest atomic batch accepted (default 16 MiB).
func WithMaxBatchBytes(n int) Opt { return optFunc(func(c *cfg) { c.maxBatchBytes = n }) }

// WithQueueDepth bounds the number of appends waiting for the writer
// (default 4096). When full, Append waits; TryAppend returns
// ferry.ErrBackpressure.
func WithQueueDepth(n int) Opt { return optFunc(func(c *cfg) { c.queueDepth = n }) }

// WithMaxQueueBytes bounds the memory held by appends waiting for the
// writer (default 64 MiB). When full, Commit waits (until its context
// ends); TryCommit returns ferry.ErrBackpressure.
func WithMaxQueueBytes(n int64) Opt { return optFunc(func(c *cfg) { c.queueBytes = n }) }

// WithMaxGroupBytes bounds how many bytes one group commit writes before
// it fsyncs (default 4 MiB).
func WithMaxGroupBytes(n int) Opt { return optFunc(func(c *cfg) { c.maxGroupBytes = n }) }

// withMaxInflight bounds the groups in the pipeline (tests: 1 holds the
// writer in each group's fsync, as before the pipeline).
func withMaxInflight(n int) Opt { return optFunc(func(c *cfg) { c.maxInflight = n }) }

// WithClock sets the clock used for message times, retention, delayed
// delivery and deduplication windows (default time.Now).
func WithClock(now func() time.Time) Opt { return optFunc(func(c *cfg) { c.now = now }) }

// Observer receives the log's measurements, for metrics (package metrics
// implements it with Prometheus). Calls come from the writer goroutine:
// they must be quick and must not call the log.
type Observer interface {
	// GroupCommit reports one group commit: the appends (callers) and
	// messages it wrote, its size in bytes, how long writing it took
	// (fsync included) and how long the fsync alone took (0 without one).
	GroupCommit(appends, messages, bytes int, write, fsync time.Duration)
	// Appended reports how long one append waited, from its call to its
	// acknowledgement.
	Appended(latency time.Duration)
}

// WithObserver reports group commits and append latencies to o.
func WithObserver(o Observer) Opt { return optFunc(func(c *cfg) { c.observer = o }) }

// WithLogger sets the structured logger (default: discard).
func WithLogger(l *slog.Logger) Opt { return optFunc(func(c *cfg) { c.logger = l }) }

// WithReadOnly opens the log without taking the directory lock and without
// changing anything on disk: no appends, no truncation of a torn tail, no
// cleaning. It sees the log as of Open, so it can inspect a directory that
// another process owns.
func WithReadOnly() Opt { return optFunc(func(c *cfg) { c.readOnly = true }) }

// WithRepair lets Open truncate the log at the first corrupt batch found in
// the middle of the log (default: refuse to open, naming file and offset).
// What was cut is reported by Log.Recovery.
func WithRepair() Opt { return optFunc(func(c *cfg) { c.repair = true }) }

// WithZeroAhead turns zeroing ahead on or off (default on). With it, a
// small group commit in DurabilityAlways that would grow the active
// segment first writes 1 MiB of zeros past its end, so that the fsyncs of
// the next small groups overwrite instead of growing the file: on ext4
// such an fsync flushes data without a journal commit (about a third
// faster on the disk of BENCHMARKS.md). On a copy-on-write filesystem
// (btrfs, ZFS), where overwriting is no cheaper, turning it off saves the
// zero writes.
func WithZeroAhead(on bool) Opt { return optFunc(func(c *cfg) { c.noZeroAhead = !on }) }

// WithCleanInterval sets how often the cleaner enforces retention and
// compaction (default 1m).
func WithCleanInterval(d time.Duration) Opt { return optFunc(func(c *cfg) { c.cleanInterval = d }) }

// WithMaxOpenSegments bounds the segment files the log keeps open (default
// 256, at least 2). Reads of older segments open their file on demand;
// the least recently used files nobody is reading are closed beyond the
// limit. The active segment always stays open; a file being read stays
// open until the read ends, so many concurrent readers of distinct old
// segments can briefly exceed the limit.
func WithMaxOpenSegments(n int) Opt { return optFunc(func(c *cfg) { c.maxOpenSegments = n }) }
