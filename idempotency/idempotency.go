// Package idempotency records which messages have been processed, so that
// a redelivered message (after a crash, a rebalance or a producer retry)
// has no second effect. Stores: in memory with a TTL (Memory), and in a
// topic of a backend (Log), whose records can be written in the same atomic
// batch as a handler's outputs — the basis of exactly-once
// consume-transform-produce. A Postgres store (the inbox) comes with
// package outbox.
package idempotency

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// Store remembers processed message IDs for at least its TTL.
type Store interface {
	// Seen reports whether id was marked processed.
	Seen(ctx context.Context, id ferry.ID) (bool, error)
	// Mark records id as processed.
	Mark(ctx context.Context, id ferry.ID) error
}

// Memory is a Store in process memory: IDs expire after the TTL, and at
// most max are kept (oldest dropped first). It does not survive restarts.
type Memory struct {
	mu    sync.Mutex
	ttl   time.Duration
	max   int
	now   func() time.Time
	seen  map[ferry.ID]time.Time
	order []ferry.ID // insertion order, for expiry
}

// NewMemory returns a memory store keeping IDs for ttl, at most max of them.
func NewMemory(ttl time.Duration, max int) *Memory {
	return &Memory{ttl: ttl, max: max, now: time.Now, seen: map[ferry.ID]time.Time{}}
}

// Seen implements Store.
func (m *Memory) Seen(_ context.Context, id ferry.ID) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked()
	_, ok := m.seen[id]
	return ok, nil
}

// Mark implements Store.
func (m *Memory) Mark(_ context.Context, id ferry.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked()
	if _, ok := m.seen[id]; ok {
		return nil
	}
	m.seen[id] = m.now()
	m.order = append(m.order, id)
	for len(m.order) > m.max {
		m.dropOldestLocked()
	}
	return nil
}

func (m *Memory) expireLocked() {
	cutoff := m.now().Add(-m.ttl)
	for len(m.order) > 0 && m.seen[m.order[0]].Before(cutoff) {
		m.dropOldestLocked()
	}
}

func (m *Memory) dropOldestLocked() {
	delete(m.seen, m.order[0])
	m.order = m.order[1:]
}

// Log is a Store kept in a topic of a backend (the embedded log, or Kafka
// for exactly-once across machines): each processed ID is a record
// (retained for the TTL where the backend can), and the set of IDs is
// rebuilt from that topic when the store opens. Marker returns the record
// so a caller can commit it atomically with its own writes; Confirm then
// records it here. Sync reads markers other processes wrote since.
type Log struct {
	b     backend.Backend
	topic string
	ttl   time.Duration
	mem   *Memory

	syncMu sync.Mutex
	next   uint64 // offset of the topic read up to
}

// OpenLog opens (creating if needed) a store kept in topic of b. IDs are
// kept for ttl (the topic's retention, where the backend can set one), at
// most max in memory.
func OpenLog(ctx context.Context, b backend.Backend, topic string, ttl time.Duration, max int) (*Log, error) {
	if ttl <= 0 || max <= 0 {
		return nil, fmt.Errorf("idempotency: ttl %v and max %d: both must be positive: %w", ttl, max, ferry.ErrInvalidArgument)
	}
	var err error
	if r, ok := b.(backend.Retention); ok {
		err = r.EnsureTopicRetention(ctx, topic, 1, ttl)
	} else {
		err = b.EnsureTopic(ctx, topic, 1)
	}
	if err != nil {
		return nil, fmt.Errorf("idempotency: topic %q: %w", topic, err)
	}
	s := &Log{b: b, topic: topic, ttl: ttl, mem: NewMemory(ttl, max)}
	if err := s.Sync(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Sync reads the markers appended to the topic since the last Sync: those
// written by other processes sharing the store (members of one group on
// several machines). The runtime calls it when a partition is assigned,
// after the partition's committed offset is known, so a message the
// previous owner processed is seen.
func (s *Log) Sync(ctx context.Context) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	tp := backend.TopicPartition{Topic: s.topic}
	start, _, err := s.b.Bounds(ctx, tp)
	if err != nil {
		return fmt.Errorf("idempotency: bounds of %q: %w", s.topic, err)
	}
	// Every marker committed before the call, even behind a transaction
	// still open (another member's).
	end, err := backend.StableEnd(ctx, s.b, tp)
	if err != nil {
		return fmt.Errorf("idempotency: end of %q: %w", s.topic, err)
	}
	s.next = max(s.next, start)
	cutoff := time.Now().Add(-s.ttl)
	for s.next < end {
		res, err := s.b.Fetch(ctx, tp, s.next, 1000)
		if err != nil {
			return fmt.Errorf("idempotency: load %q at %d: %w", s.topic, s.next, err)
		}
		for _, m := range res.Messages {
			id, err := ferry.ParseID(string(m.Key))
			if err != nil {
				return fmt.Errorf("idempotency: record at %s/0@%d: %w", s.topic, m.Offset, err)
			}
			if m.Time.After(cutoff) {
				s.mem.Mark(ctx, id)
			}
		}
		s.next = max(s.next, res.Next)
	}
	return nil
}

// Topic returns the topic holding the records.
func (s *Log) Topic() string { return s.topic }

// Seen implements Store.
func (s *Log) Seen(ctx context.Context, id ferry.ID) (bool, error) { return s.mem.Seen(ctx, id) }

// Mark implements Store: it appends the record durably, then remembers it.
func (s *Log) Mark(ctx context.Context, id ferry.ID) error {
	if err := s.b.Publish(ctx, s.Marker(id)); err != nil {
		return fmt.Errorf("idempotency: mark %s: %w", id, err)
	}
	return s.Confirm(ctx, id)
}

// Marker returns the record that marks id processed, for a caller to write
// in its own atomic batch (then call Confirm).
func (s *Log) Marker(id ferry.ID) *ferry.Message {
	return &ferry.Message{Topic: s.topic, Key: []byte(id.String()), Payload: []byte{}}
}

// Confirm records in memory an ID whose marker the caller has written.
func (s *Log) Confirm(ctx context.Context, id ferry.ID) error { return s.mem.Mark(ctx, id) }
