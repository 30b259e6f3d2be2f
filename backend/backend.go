// Package backend defines what the processing runtime needs from a log:
// publish, fetch, committed offsets, and consumer-group membership. The
// embedded log implements it (backend/embedded); so will NATS JetStream and
// Kafka, each passing the same conformance suite.
package backend

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/ferrymq/ferry"
)

// TopicPartition names one partition.
type TopicPartition struct {
	Topic     string
	Partition int32
}

// Offset is a group's position in a partition: the next offset to process.
type Offset struct {
	TopicPartition
	Offset uint64
}

// Fetched is the result of one Fetch.
type Fetched struct {
	Messages []*ferry.Message
	Next     uint64 // offset to fetch from next
}

// Backend is a partitioned log the runtime can consume and publish to.
type Backend interface {
	// EnsureTopic creates a topic with the given partitions if it does not
	// exist; an existing topic is left as it is.
	EnsureTopic(ctx context.Context, topic string, partitions int) error
	// Partitions returns a topic's partition count.
	Partitions(ctx context.Context, topic string) (int, error)
	// Publish appends messages; when it returns nil they are durable as
	// the backend promises. It sets Partition and Offset. A message whose
	// ID is in the topic's deduplication window (the embedded log,
	// JetStream) is not written again and is no error: its Partition and
	// Offset are the original's, and DedupPublisher says which were.
	Publish(ctx context.Context, msgs ...*ferry.Message) error
	// Fetch returns messages of a partition from offset, waiting until at
	// least one is available or ctx ends.
	Fetch(ctx context.Context, tp TopicPartition, offset uint64, max int) (Fetched, error)
	// Committed returns a group's committed offset for a partition.
	Committed(ctx context.Context, group string, tp TopicPartition) (offset uint64, ok bool, err error)
	// Bounds returns a partition's first retained offset and its end (one
	// past the last readable offset).
	Bounds(ctx context.Context, tp TopicPartition) (start, end uint64, err error)
	// OffsetForTime returns the first offset of a partition whose message
	// time is at or after t, or the partition's end if there is none: where
	// a replay from a point in time starts.
	OffsetForTime(ctx context.Context, tp TopicPartition, t time.Time) (uint64, error)
	// Commit records a group's offsets. Commits by a member whose session
	// has lost the partition fail with ErrFenced.
	Commit(ctx context.Context, s Session, offsets ...Offset) error
	// Join makes member part of group, consuming topics.
	Join(ctx context.Context, group, member string, topics []string) (Session, error)
	// Close releases the backend.
	Close() error
}

// DedupPublisher is implemented by backends that deduplicate messages by
// ID within a window (the embedded log and JetStream; Kafka has no such
// window): PublishDedup is Publish, and reports for each message whether
// it was a duplicate, not written again, its Partition and Offset being
// the original's.
type DedupPublisher interface {
	PublishDedup(ctx context.Context, msgs ...*ferry.Message) (duplicate []bool, err error)
}

// EnsureTopicConfig creates the topic t describes, with its retention,
// compaction and deduplication window (TopicInfo.DedupWindow: 0 for the
// backend's default, negative for none where the backend allows it), if
// it does not exist; an existing topic is left as it is. It needs Admin
// unless t asks for partitions alone (then it is EnsureTopic).
func EnsureTopicConfig(ctx context.Context, b Backend, t TopicInfo) error {
	adm, ok := b.(Admin)
	if !ok {
		if t.RetentionAge != 0 || t.RetentionBytes != 0 || t.Compact || t.DedupWindow != 0 {
			return fmt.Errorf("topic %s: %T cannot create a topic with retention, compaction or a dedup window of its own: %w", t.Name, b, ferry.ErrInvalidArgument)
		}
		return b.EnsureTopic(ctx, t.Name, t.Partitions)
	}
	if _, err := b.Partitions(ctx, t.Name); err == nil {
		return nil
	} else if !errors.Is(err, ferry.ErrTopicNotFound) {
		return err
	}
	if err := adm.CreateTopic(ctx, t); err != nil && !errors.Is(err, ferry.ErrTopicExists) {
		return err
	}
	return nil
}

// HealthChecker is implemented by backends that know when they can no
// longer work (the embedded log after a failed write or fsync): Healthy
// returns why, or nil.
type HealthChecker interface {
	Healthy() error
}

// Retention is implemented by backends that can create a topic whose
// messages are dropped once older than a given age.
type Retention interface {
	// EnsureTopicRetention is EnsureTopic for a topic keeping messages for
	// age; an existing topic is left as it is.
	EnsureTopicRetention(ctx context.Context, topic string, partitions int, age time.Duration) error
}

// TopicAlterer is implemented by backends whose topics' retention can
// change after creation.
type TopicAlterer interface {
	// AlterTopic sets the topic's RetentionAge and RetentionBytes to t's
	// (0: keep forever, unbounded). The other fields of t are ignored:
	// partitions, compaction and deduplication stay as created.
	// ferry.ErrTopicNotFound if there is no such topic.
	AlterTopic(ctx context.Context, t TopicInfo) error
}

// GroupDeleter is implemented by backends that can delete a consumer
// group's committed offsets (a throwaway subscription's, or a group
// retired for good).
type GroupDeleter interface {
	// DeleteGroup deletes every committed offset of group. Callers check
	// that it has no live members first (Admin.Members): one would commit
	// again. A group without offsets is no error.
	DeleteGroup(ctx context.Context, group string) error
}

// Browser is implemented by backends that can read a partition as it is,
// for an operator to look at: delayed messages included, in offset order,
// without waiting for them to be due. A read at an offset before the
// partition's end returns at least one message (or moves Next past what
// is not readable, such as transaction markers) without waiting.
type Browser interface {
	Browse(ctx context.Context, tp TopicPartition, offset uint64, max int) (Fetched, error)
}

// Admin is implemented by backends an operator can manage through the
// admin API: what it needs beyond the runtime's operations.
type Admin interface {
	// Topics lists the topics, sorted by name.
	Topics(ctx context.Context) ([]TopicInfo, error)
	// CreateTopic creates a topic as t describes it (ferry.ErrTopicExists
	// if there is one; ferry.ErrInvalidArgument for what the backend
	// cannot do, such as compaction where it has none). Bytes is ignored.
	CreateTopic(ctx context.Context, t TopicInfo) error
	// DeleteTopic deletes a topic and its messages (ferry.ErrTopicNotFound
	// if there is none).
	DeleteTopic(ctx context.Context, topic string) error
	// Groups returns every consumer group with committed offsets, with
	// them, sorted by topic and partition.
	Groups(ctx context.Context) (map[string][]Offset, error)
	// Members lists the group's members that the backend knows to be
	// live (in any process), sorted.
	Members(ctx context.Context, group string) ([]string, error)
	// SetCommitted moves a group's committed offsets outside any
	// session: an operator's reset. Callers check Members first; a live
	// member would commit over it.
	SetCommitted(ctx context.Context, group string, offsets ...Offset) error
}

// TopicInfo describes a topic for Admin.Topics.
type TopicInfo struct {
	Name       string
	Partitions int
	// RetentionAge drops messages older than this (0: kept forever, or
	// not known to the backend).
	RetentionAge time.Duration
	// RetentionBytes bounds each partition's size (0: unbounded).
	RetentionBytes int64
	// Compact keeps only each key's latest message.
	Compact bool
	// DedupWindow is how long message IDs are remembered for producer
	// deduplication (0: the backend's default, or none).
	DedupWindow time.Duration
	// Bytes is the size the backend stores, -1 if it does not say.
	Bytes int64
}

// Transactional backends can publish messages and commit a group's input
// offsets atomically: the basis of exactly-once consume-transform-produce.
type Transactional interface {
	PublishAndCommit(ctx context.Context, s Session, msgs []*ferry.Message, offsets ...Offset) error
	// StableEnd returns an end of tp below which every message whose
	// write was acknowledged before the call is readable. Bounds' end may
	// stop short of such a message while a transaction that wrote to tp
	// earlier is still open (Kafka's last stable offset); StableEnd waits
	// for the transactions open at the call to end.
	StableEnd(ctx context.Context, tp TopicPartition) (uint64, error)
}

// StableEnd returns an end of tp below which every message whose write
// was acknowledged before the call is readable: a Transactional backend's
// StableEnd, otherwise Bounds' end. A reader that must see everything
// another process committed before it started (a partition's new owner
// reading the exactly-once markers or the DLQ) reads up to it.
func StableEnd(ctx context.Context, b Backend, tp TopicPartition) (uint64, error) {
	if t, ok := b.(Transactional); ok {
		return t.StableEnd(ctx, tp)
	}
	_, end, err := b.Bounds(ctx, tp)
	return end, err
}

// Session is one member's membership of a group.
type Session interface {
	// Group and Member name the session.
	Group() string
	Member() string
	// Assignments delivers the member's partitions whenever they change.
	// Only the latest assignment is kept if the member lags.
	Assignments() <-chan []TopicPartition
	// Release hands a revoked partition back after the member stopped
	// processing it and committed; only then is it given to its new owner.
	Release(tp TopicPartition)
	// Heartbeat keeps the session alive; a member that stops heartbeating
	// for the session timeout loses its partitions.
	Heartbeat() error
	// Lease returns until when the member's partitions are its own on the
	// strength of the heartbeats that succeeded so far, on this process's
	// clock: no other member can be given them before then, and after it
	// they may already be another's. It is the zero time once the session
	// has ended. The runtime starts no handler and writes no dead letter
	// for a partition once the lease has passed, so a member that resumes
	// after a pause longer than its session (SIGSTOP, a stalled host)
	// cannot run a message beside its new owner.
	Lease() time.Time
	// Leave ends the session and frees its partitions.
	Leave()
}

// ErrFenced: the member no longer owns the partition (its session expired
// or it was revoked); its commit was refused.
var ErrFenced = errors.New("backend: member fenced: partition not owned")

// ErrSessionExpired: the session missed its heartbeats and was removed.
var ErrSessionExpired = errors.New("backend: session expired")

// Less orders partitions by topic, then partition number.
func (tp TopicPartition) Less(o TopicPartition) bool {
	return tp.Topic < o.Topic || tp.Topic == o.Topic && tp.Partition < o.Partition
}

// SortPartitions sorts tps by topic, then partition.
func SortPartitions(tps []TopicPartition) {
	sort.Slice(tps, func(i, j int) bool { return tps[i].Less(tps[j]) })
}

// Assign spreads every partition a member wants over the members that
// want it, round-robin in a stable order (members by name, partitions by
// topic and number). wants maps member name to its partitions. Every
// coordinator computes the same result from the same membership, so the
// backends agree on it without talking.
func Assign(wants map[string][]TopicPartition) map[TopicPartition]string {
	names := make([]string, 0, len(wants))
	for n := range wants {
		names = append(names, n)
	}
	sort.Strings(names)
	wanted := map[TopicPartition][]string{}
	for _, n := range names {
		for _, tp := range wants[n] {
			wanted[tp] = append(wanted[tp], n)
		}
	}
	tps := make([]TopicPartition, 0, len(wanted))
	for tp := range wanted {
		tps = append(tps, tp)
	}
	SortPartitions(tps)
	out := make(map[TopicPartition]string, len(tps))
	for i, tp := range tps {
		ms := wanted[tp]
		out[tp] = ms[i%len(ms)]
	}
	return out
}

// TakeDue removes from *held, and returns, the messages that can be
// delivered at now, at most max: the prefix before the first message whose
// NotBefore is in the future. Backends without delayed delivery of their
// own hold the rest back, so a delayed message also delays what follows it
// in its partition, as in the embedded log.
func TakeDue(held *[]*ferry.Message, max int, now time.Time) []*ferry.Message {
	msgs := *held
	n := 0
	for n < len(msgs) && n < max && !msgs[n].NotBefore.After(now) {
		n++
	}
	if n == 0 {
		return nil
	}
	*held = msgs[n:]
	return msgs[:n:n]
}

// AllDue is a clock at the end of time, for TakeDue: every message is
// due (a Browse).
func AllDue() time.Time { return time.Unix(1<<62, 0) }

// WaitDue waits until the first of held is due (at most a second, so a
// caller rechecks regularly) or ctx ends (its error).
func WaitDue(ctx context.Context, held []*ferry.Message) error {
	wait := time.Second
	if len(held) > 0 {
		wait = min(time.Until(held[0].NotBefore), wait)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
		return nil
	}
}
