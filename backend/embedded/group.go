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
	timeout  time.Duration // the session timeout: expiry comes after lastBeat+timeout
	lastBeat time.Time     // guarded by g.mu
	gone     bool          // guarded by g.mu
	// sent is the last assignment put in assign; known holds every
	// partition the member has taken in an assignment since it last
	// released it (guarded by g.mu): see deliverLocked.
	sent  []backend.TopicPartition
	known map[backend.TopicPartition]bool
	// commitMu orders the member's commits into the log; offsetsSent is
	// the furthest offset it sent per partition (see PublishAndCommit).
	commitMu    sync.Mutex
	offsetsSent map[backend.TopicPartition]uint64
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
	for {
		desired := g.desiredLocked()
		for tp, want := range desired {
			if g.owner[tp] == nil {
				g.owner[tp] = want
			}
		}
		var orphans []backend.TopicPartition
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
			orphans = append(orphans, s.deliverLocked(mine)...)
		}
		if len(orphans) == 0 {
			return
		}
		// Granted and taken back before their owner ever saw them: it will
		// never release them, so they are free now.
		for _, tp := range orphans {
			delete(g.owner, tp)
		}
	}
}

// deliverLocked replaces any assignment the member has not taken yet with
// tps. It returns the partitions the member owns but will never hear of: in
// neither the last assignment it took nor tps (they were granted only in
// the assignment replaced). Left owned, no one would ever run them.
func (s *session) deliverLocked(tps []backend.TopicPartition) []backend.TopicPartition {
	select {
	case <-s.assign: // not taken: the member knows no more than before
	default:
		if s.known == nil {
			s.known = map[backend.TopicPartition]bool{}
		}
		for _, tp := range s.sent { // taken
			s.known[tp] = true
		}
	}
	s.sent = tps
	s.assign <- tps
	in := make(map[backend.TopicPartition]bool, len(tps))
	for _, tp := range tps {
		in[tp] = true
	}
	var orphans []backend.TopicPartition
	for tp, o := range s.g.owner {
		if o == s && !s.known[tp] && !in[tp] {
			orphans = append(orphans, tp)
		}
	}
	return orphans
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
		delete(s.known, tp)
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

// Lease implements backend.Session: the coordinator removes a member only
// once it has been silent for longer than the session timeout. What is
// left of it on the backend's clock (WithClock) is returned on the
// process's.
func (s *session) Lease() time.Time {
	g := s.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if s.gone {
		return time.Time{}
	}
	return time.Now().Add(s.lastBeat.Add(s.timeout).Sub(s.now()))
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
