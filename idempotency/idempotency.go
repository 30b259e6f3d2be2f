// Package idempotency records which messages have been processed, so that
// a redelivered message (after a crash, a rebalance or a producer retry)
// has no second effect. Stores: in memory with a TTL (Memory), and on the
// embedded log (Log), whose records can be written in the same atomic
// batch as a handler's outputs — the basis of exactly-once
// consume-transform-produce. A Postgres store (the inbox) comes with
// package outbox.
package idempotency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
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

// Log is a Store on the embedded log: each processed ID is a record of a
// topic (retained for the TTL), and the set of IDs is rebuilt from that
// topic when the store opens. Marker returns the record so a caller can
// commit it atomically with its own writes; Confirm then records it here.
type Log struct {
	log   *commitlog.Log
	topic string
	mem   *Memory
}

// OpenLog opens (creating if needed) a store kept in topic of l. IDs are
// kept for ttl (the topic's retention), at most max in memory.
func OpenLog(ctx context.Context, l *commitlog.Log, topic string, ttl time.Duration, max int) (*Log, error) {
	err := l.CreateTopic(ctx, topic, commitlog.TopicConfig{RetentionAge: ttl})
	if err != nil && !errors.Is(err, ferry.ErrTopicExists) {
		return nil, fmt.Errorf("idempotency: topic %q: %w", topic, err)
	}
	s := &Log{log: l, topic: topic, mem: NewMemory(ttl, max)}
	start, end, err := l.Bounds(topic, 0)
	if err != nil {
		return nil, err
	}
	cutoff := time.Now().Add(-ttl)
	for off := start; off < end; {
		res, err := l.Read(topic, 0, off, commitlog.ReadOpts{})
		if err != nil {
			return nil, fmt.Errorf("idempotency: load %q: %w", topic, err)
		}
		for _, m := range res.Messages {
			id, err := ferry.ParseID(string(m.Key))
			if err != nil {
				return nil, fmt.Errorf("idempotency: record at %s/0@%d: %w", topic, m.Offset, err)
			}
			if m.Time.After(cutoff) {
				s.mem.Mark(ctx, id)
			}
		}
		if len(res.Messages) == 0 {
			break
		}
		off = res.Next
	}
	return s, nil
}

// Topic returns the topic holding the records.
func (s *Log) Topic() string { return s.topic }

// Seen implements Store.
func (s *Log) Seen(ctx context.Context, id ferry.ID) (bool, error) { return s.mem.Seen(ctx, id) }

// Mark implements Store: it appends the record durably, then remembers it.
func (s *Log) Mark(ctx context.Context, id ferry.ID) error {
	if err := s.log.Append(ctx, s.Marker(id)); err != nil {
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
