// Package embedded is the backend over ferry's embedded log (commitlog):
// topics and offsets live in the log; consumer groups are coordinated in
// process.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/commitlog"
)

// Backend is a backend.Backend over a commitlog.Log.
type Backend struct {
	log            *commitlog.Log
	sessionTimeout time.Duration
	now            func() time.Time

	mu     sync.Mutex
	groups map[string]*group
	stop   chan struct{}
	done   chan struct{}
}

var (
	_ backend.Backend       = (*Backend)(nil)
	_ backend.Browser       = (*Backend)(nil)
	_ backend.Transactional = (*Backend)(nil)
)

// Opt configures New.
type Opt interface{ apply(*Backend) }

type optFunc func(*Backend)

func (f optFunc) apply(b *Backend) { f(b) }

// WithSessionTimeout sets how long a member may go without a heartbeat
// before its partitions are given to others (default 10s).
func WithSessionTimeout(d time.Duration) Opt {
	return optFunc(func(b *Backend) { b.sessionTimeout = d })
}

// WithClock sets the clock for session expiry (default time.Now).
func WithClock(now func() time.Time) Opt { return optFunc(func(b *Backend) { b.now = now }) }

// New returns a backend over l. The caller keeps ownership of l.
func New(l *commitlog.Log, opts ...Opt) *Backend {
	b := &Backend{log: l, sessionTimeout: 10 * time.Second, now: time.Now, groups: map[string]*group{}, stop: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		o.apply(b)
	}
	go b.expireSessions()
	return b
}

// Log returns the underlying log.
func (b *Backend) Log() *commitlog.Log { return b.log }

// EnsureTopic implements backend.Backend.
func (b *Backend) EnsureTopic(ctx context.Context, topic string, partitions int) error {
	return b.ensure(ctx, topic, commitlog.TopicConfig{Partitions: partitions})
}

// EnsureTopicRetention implements backend.Retention.
func (b *Backend) EnsureTopicRetention(ctx context.Context, topic string, partitions int, age time.Duration) error {
	return b.ensure(ctx, topic, commitlog.TopicConfig{Partitions: partitions, RetentionAge: age})
}

func (b *Backend) ensure(ctx context.Context, topic string, cfg commitlog.TopicConfig) error {
	if cfg.Partitions < 1 {
		return fmt.Errorf("embedded: topic %q with %d partitions: want at least 1: %w", topic, cfg.Partitions, ferry.ErrInvalidArgument)
	}
	err := b.log.CreateTopic(ctx, topic, cfg)
	if errors.Is(err, ferry.ErrTopicExists) {
		return nil
	}
	return err
}

// Partitions implements backend.Backend.
func (b *Backend) Partitions(_ context.Context, topic string) (int, error) {
	info, err := b.log.Topic(topic)
	if err != nil {
		return 0, err
	}
	return len(info.Partitions), nil
}

// Publish implements backend.Backend.
func (b *Backend) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	return b.log.Append(ctx, msgs...)
}

// Healthy implements backend.HealthChecker: the log's state (it stops
// accepting appends after a write or fsync failed, until reopened).
func (b *Backend) Healthy() error { return b.log.Healthy() }

// PublishDedup implements backend.DedupPublisher.
func (b *Backend) PublishDedup(ctx context.Context, msgs ...*ferry.Message) ([]bool, error) {
	batch := &commitlog.Batch{Messages: msgs}
	if err := b.log.Commit(ctx, batch); err != nil {
		return nil, err
	}
	if batch.Duplicate == nil {
		return make([]bool, len(msgs)), nil
	}
	return batch.Duplicate, nil
}

// Fetch implements backend.Backend.
func (b *Backend) Fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	res, err := b.log.Fetch(ctx, tp.Topic, tp.Partition, offset, commitlog.ReadOpts{MaxMessages: max})
	return backend.Fetched{Messages: res.Messages, Next: res.Next}, err
}

// Browse implements backend.Browser.
func (b *Backend) Browse(_ context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	res, err := b.log.Read(tp.Topic, tp.Partition, offset, commitlog.ReadOpts{MaxMessages: max, IncludeDelayed: true})
	return backend.Fetched{Messages: res.Messages, Next: res.Next}, err
}

// Committed implements backend.Backend.
func (b *Backend) Committed(_ context.Context, group string, tp backend.TopicPartition) (uint64, bool, error) {
	off, ok := b.log.CommittedOffset(group, tp.Topic, tp.Partition)
	return off, ok, nil
}

// Bounds implements backend.Backend.
func (b *Backend) Bounds(_ context.Context, tp backend.TopicPartition) (uint64, uint64, error) {
	return b.log.Bounds(tp.Topic, tp.Partition)
}

// OffsetForTime implements backend.Backend.
func (b *Backend) OffsetForTime(_ context.Context, tp backend.TopicPartition, t time.Time) (uint64, error) {
	return b.log.OffsetForTime(tp.Topic, tp.Partition, t)
}

// Commit implements backend.Backend.
func (b *Backend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	return b.PublishAndCommit(ctx, s, nil, offsets...)
}

// StableEnd implements backend.Transactional: an atomic batch is
// readable once appended, so it is Bounds' end.
func (b *Backend) StableEnd(ctx context.Context, tp backend.TopicPartition) (uint64, error) {
	_, end, err := b.Bounds(ctx, tp)
	return end, err
}

// PublishAndCommit implements backend.Transactional: messages and offsets
// go into the log in one atomic batch. s may be nil when there are no
// offsets (an atomic publish of several messages).
func (b *Backend) PublishAndCommit(ctx context.Context, s backend.Session, msgs []*ferry.Message, offsets ...backend.Offset) error {
	if s == nil && len(offsets) == 0 {
		if len(msgs) == 0 {
			return nil
		}
		return b.log.Append(ctx, msgs...)
	}
	sess, ok := s.(*session)
	if !ok {
		return fmt.Errorf("embedded: session from another backend: %w", ferry.ErrInvalidArgument)
	}
	for _, o := range offsets {
		if !sess.g.owns(sess, o.TopicPartition) {
			return fmt.Errorf("embedded: commit %s/%d by %s: %w", o.Topic, o.Partition, sess.member, backend.ErrFenced)
		}
	}
	batch := &commitlog.Batch{Messages: msgs, Group: sess.g.name}
	if len(msgs) == 0 && len(offsets) == 0 {
		return nil
	}
	// A member's offsets never go back: batches captured concurrently (a
	// lane's exactly-once outputs with the watermark it saw, the commit
	// loop's later watermark) may reach here in either order, so each is
	// raised to the furthest this session sent, and queued in the log in
	// that order. Only the queueing is serialized; the batches share
	// fsyncs as before.
	sess.commitMu.Lock()
	for _, o := range offsets {
		off := max(o.Offset, sess.offsetsSent[o.TopicPartition])
		sess.offsetsSent[o.TopicPartition] = off
		batch.Offsets = append(batch.Offsets, commitlog.Offset{Topic: o.Topic, Partition: o.Partition, Offset: off})
	}
	done := make(chan error, 1)
	b.log.CommitAsync(ctx, batch, func(_ *commitlog.Batch, err error) { done <- err })
	sess.commitMu.Unlock()
	return <-done
}

// Close stops session expiry. It does not close the log.
func (b *Backend) Close() error {
	select {
	case <-b.stop:
		return ferry.ErrClosed
	default:
	}
	close(b.stop)
	<-b.done
	return nil
}

func (b *Backend) expireSessions() {
	defer close(b.done)
	t := time.NewTicker(max(b.sessionTimeout/10, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.mu.Lock()
			groups := make([]*group, 0, len(b.groups))
			for _, g := range b.groups {
				groups = append(groups, g)
			}
			b.mu.Unlock()
			for _, g := range groups {
				g.expire(b.now().Add(-b.sessionTimeout))
			}
		}
	}
}

// Join implements backend.Backend.
func (b *Backend) Join(ctx context.Context, groupName, member string, topics []string) (backend.Session, error) {
	if groupName == "" || member == "" || len(topics) == 0 {
		return nil, fmt.Errorf("embedded: join needs a group, a member and topics: %w", ferry.ErrInvalidArgument)
	}
	var tps []backend.TopicPartition
	for _, t := range topics {
		n, err := b.Partitions(ctx, t)
		if err != nil {
			return nil, err
		}
		for p := 0; p < n; p++ {
			tps = append(tps, backend.TopicPartition{Topic: t, Partition: int32(p)})
		}
	}
	b.mu.Lock()
	g := b.groups[groupName]
	if g == nil {
		g = &group{name: groupName, members: map[string]*session{}, owner: map[backend.TopicPartition]*session{}}
		b.groups[groupName] = g
	}
	b.mu.Unlock()
	s := &session{g: g, member: member, topics: tps, assign: make(chan []backend.TopicPartition, 1), now: b.now, timeout: b.sessionTimeout, offsetsSent: map[backend.TopicPartition]uint64{}}
	if err := g.join(s, b.now()); err != nil {
		return nil, err
	}
	return s, nil
}
