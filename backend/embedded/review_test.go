package embedded

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/ferrymq/ferry/backend"
)

// reviewMember models what consumer.Run does with a session: it reads an
// assignment, releases (one step at a time, as its workers stop) what the
// assignment left out, and only then runs the new set.
type reviewMember struct {
	name    string
	s       backend.Session
	running map[backend.TopicPartition]bool // workers alive (taken and not yet released)
	pending []backend.TopicPartition        // to release before the assignment below starts
	next    []backend.TopicPartition        // the assignment read, started once pending is empty
	reading bool
}

func (m *reviewMember) read() bool {
	if m.reading {
		return false
	}
	select {
	case tps, ok := <-m.s.Assignments():
		if !ok {
			return false
		}
		want := map[backend.TopicPartition]bool{}
		for _, tp := range tps {
			want[tp] = true
		}
		m.pending = m.pending[:0]
		for tp := range m.running {
			if !want[tp] {
				m.pending = append(m.pending, tp)
			}
		}
		backend.SortPartitions(m.pending)
		m.next = tps
		m.reading = true
		m.finishIfDone()
		return true
	default:
		return false
	}
}

func (m *reviewMember) releaseOne() bool {
	if !m.reading || len(m.pending) == 0 {
		return false
	}
	tp := m.pending[0]
	m.pending = m.pending[1:]
	delete(m.running, tp)
	m.s.Release(tp)
	m.finishIfDone()
	return true
}

func (m *reviewMember) finishIfDone() {
	if m.reading && len(m.pending) == 0 {
		for _, tp := range m.next {
			m.running[tp] = true
		}
		m.reading = false
	}
}

// TestReviewCoordinatorModel drives the embedded coordinator through
// random orders of joins (new names and reused ones), leaves, session
// expiry, unread and replaced assignments, and releases that interleave
// with other members' steps. After every step: no partition is run by two
// live members, and a partition a live member runs is owned by it. After
// every member has caught up: every partition is run by exactly one
// member.
func TestReviewCoordinatorModel(t *testing.T) {
	const partitions = 4
	names := []string{"a", "b", "c", "d"}
	for seed := uint64(0); seed < 3000; seed++ {
		ctx := context.Background()
		b := newTestBackend(t, WithSessionTimeout(time.Hour))
		rng := rand.New(rand.NewPCG(seed, 99))
		members := map[string]*reviewMember{}
		var trace []string
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: %s\ntrace:\n  %s", seed, fmt.Sprintf(format, args...), joinLines(trace))
		}
		check := func() {
			g := b.groups["g"]
			if g == nil {
				return
			}
			g.mu.Lock()
			owner := map[backend.TopicPartition]string{}
			for tp, s := range g.owner {
				owner[tp] = s.member
			}
			g.mu.Unlock()
			runBy := map[backend.TopicPartition][]string{}
			for _, n := range sortedNames(members) {
				m := members[n]
				for tp := range m.running {
					runBy[tp] = append(runBy[tp], n)
					if owner[tp] != n {
						fail("%s runs %v but the coordinator says its owner is %q", n, tp, owner[tp])
					}
				}
			}
			for tp, ns := range runBy {
				if len(ns) > 1 {
					fail("%v run by %v at once", tp, ns)
				}
			}
		}
		for step := 0; step < 60; step++ {
			n := names[rng.IntN(len(names))]
			m := members[n]
			switch op := rng.IntN(10); {
			case m == nil && op < 3:
				s, err := b.Join(ctx, "g", n, []string{"t"})
				if err != nil {
					fail("join %s: %v", n, err)
				}
				members[n] = &reviewMember{name: n, s: s, running: map[backend.TopicPartition]bool{}}
				trace = append(trace, "join "+n)
			case m != nil && op == 0:
				m.s.Leave()
				delete(members, n)
				trace = append(trace, "leave "+n)
			case m != nil && op == 1:
				// Session expiry: the member's workers stop when it notices
				// (fenced meanwhile); model it as gone at once.
				g := b.groups["g"]
				sess := m.s.(*session)
				g.mu.Lock()
				sess.lastBeat = time.Unix(0, 0)
				g.mu.Unlock()
				g.expire(time.Unix(1, 0))
				delete(members, n)
				trace = append(trace, "expire "+n)
			case m != nil && op < 6:
				if m.read() {
					trace = append(trace, fmt.Sprintf("%s reads %v (releases %v)", n, m.next, m.pending))
				}
			case m != nil:
				if tp := firstPending(m); m.releaseOne() {
					trace = append(trace, fmt.Sprintf("%s releases %v", n, tp))
				}
			}
			check()
		}
		// Catch up: every member reads and releases until nothing moves.
		for round := 0; round < 100; round++ {
			moved := false
			for _, n := range sortedNames(members) {
				m := members[n]
				for m.releaseOne() {
					moved = true
				}
				if m.read() {
					moved = true
				}
				for m.releaseOne() {
					moved = true
				}
				check()
			}
			if !moved {
				break
			}
		}
		if len(members) == 0 {
			continue
		}
		for p := int32(0); p < partitions; p++ {
			tp := backend.TopicPartition{Topic: "t", Partition: p}
			var by []string
			for _, n := range sortedNames(members) {
				if members[n].running[tp] {
					by = append(by, n)
				}
			}
			if len(by) != 1 {
				fail("after catching up, %v is run by %v (members %v)", tp, by, sortedNames(members))
			}
		}
	}
}

func firstPending(m *reviewMember) backend.TopicPartition {
	if len(m.pending) == 0 {
		return backend.TopicPartition{}
	}
	return m.pending[0]
}

func sortedNames(ms map[string]*reviewMember) []string {
	out := make([]string, 0, len(ms))
	for n := range ms {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func joinLines(ls []string) string {
	out := ""
	for i, l := range ls {
		if i > 0 {
			out += "\n  "
		}
		out += l
	}
	return out
}
