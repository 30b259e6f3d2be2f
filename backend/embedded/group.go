package embedded

import (
	"fmt"
	"sync"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// group coordinates the members of one consumer group. A partition has at
// most one owner at a time: when a rebalance moves it, the old owner is
// first told it is gone (its assignment shrinks), stops, commits and calls
// Release; only then does the new owner get it. A member that stops
// heartbeating loses its partitions at once (its later commits are fenced).
type group struct {
	name    string
	mu      sync.Mutex
	members map[string]*session
	owner   map[backend.TopicPartition]*session
}

type session struct {
	g        *group
	member   string
	topics   []backend.TopicPartition
	assign   chan []backend.TopicPartition
	now      func() time.Time
	lastBeat time.Time // guarded by g.mu
	gone     bool      // guarded by g.mu
}

func (g *group) join(s *session, now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if old := g.members[s.member]; old != nil && !old.gone {
		return fmt.Errorf("embedded: member %q already in group %q: %w", s.member, g.name, ferry.ErrInvalidArgument)
	}
	s.lastBeat = now
	g.members[s.member] = s
	g.rebalanceLocked()
	return nil
}

// desiredLocked is the assignment the current members should have.
func (g *group) desiredLocked() map[backend.TopicPartition]*session {
	wants := make(map[string][]backend.TopicPartition, len(g.members))
	for n, s := range g.members {
		wants[n] = s.topics
	}
	out := map[backend.TopicPartition]*session{}
	for tp, n := range backend.Assign(wants) {
		out[tp] = g.members[n]
	}
	return out
}

// rebalanceLocked grants free partitions to their desired owners and tells
// every member its current set.
func (g *group) rebalanceLocked() {
	desired := g.desiredLocked()
	for tp, want := range desired {
		if g.owner[tp] == nil {
			g.owner[tp] = want
		}
	}
	for _, s := range g.members {
		var mine []backend.TopicPartition
		for tp, o := range g.owner {
			// A partition stays with its owner until released, but the
			// owner is told it should let go: it is left out of its set.
			if o == s && desired[tp] == s {
				mine = append(mine, tp)
			}
		}
		backend.SortPartitions(mine)
		s.deliver(mine)
	}
}

// deliver replaces any undelivered assignment with the latest.
func (s *session) deliver(tps []backend.TopicPartition) {
	select {
	case <-s.assign:
	default:
	}
	s.assign <- tps
}

func (g *group) owns(s *session, tp backend.TopicPartition) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !s.gone && g.owner[tp] == s
}

func (g *group) expire(cutoff time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	changed := false
	for name, s := range g.members {
		if s.lastBeat.Before(cutoff) {
			g.removeLocked(name, s)
			changed = true
		}
	}
	if changed {
		g.rebalanceLocked()
	}
}

func (g *group) removeLocked(name string, s *session) {
	s.gone = true
	delete(g.members, name)
	for tp, o := range g.owner {
		if o == s {
			delete(g.owner, tp)
		}
	}
	close(s.assign)
}

func (s *session) Group() string                                { return s.g.name }
func (s *session) Member() string                               { return s.member }
func (s *session) Assignments() <-chan []backend.TopicPartition { return s.assign }

func (s *session) Release(tp backend.TopicPartition) {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.owner[tp] == s {
		delete(g.owner, tp)
		g.rebalanceLocked()
	}
}

func (s *session) Heartbeat() error {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.gone {
		return fmt.Errorf("embedded: member %q of group %q: %w", s.member, g.name, backend.ErrSessionExpired)
	}
	s.lastBeat = s.now()
	return nil
}

func (s *session) Leave() {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if !s.gone {
		g.removeLocked(s.member, s)
		g.rebalanceLocked()
	}
}
