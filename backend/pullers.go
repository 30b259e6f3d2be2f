package backend

import "sync"

// Puller reads one partition for a backend whose readers hold state on the
// server or in a client (a Kafka client, a JetStream consumer): where it
// is positioned, and how to let it go.
type Puller interface {
	// Position is the offset the puller reads next.
	Position() uint64
	// Close releases the puller's client or server state.
	Close()
}

// maxIdlePullers bounds the idle pullers kept per partition.
const maxIdlePullers = 4

// Pullers keeps a backend's idle pullers per partition, so that
// concurrent fetches of one partition — two groups, a DLQ scan beside the
// consumer that follows it — never wait for each other: a fetch takes an
// idle puller already positioned at its offset, else any idle one (to
// reposition), else it makes a new one; and puts it back when done. No
// puller is shared while in use, so no lock is held through the wait for
// new messages. The zero value is ready to use.
type Pullers[P Puller] struct {
	mu     sync.Mutex
	idle   map[TopicPartition][]P
	closed bool
}

// Take returns an idle puller of tp, positioned at offset if one is, and
// whether there was one (if not, the caller makes one and Puts it after).
func (s *Pullers[P]) Take(tp TopicPartition, offset uint64) (P, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.idle[tp]
	var zero P
	if len(ps) == 0 {
		return zero, false
	}
	pick := len(ps) - 1 // the most recently used, unless one is positioned
	for i, p := range ps {
		if p.Position() == offset {
			pick = i
			break
		}
	}
	p := ps[pick]
	s.idle[tp] = append(ps[:pick], ps[pick+1:]...)
	return p, true
}

// Put returns p, a puller of tp, to the idle ones. Beyond maxIdlePullers
// the oldest idle puller of tp is closed; after Close, p is.
func (s *Pullers[P]) Put(tp TopicPartition, p P) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		p.Close()
		return
	}
	if s.idle == nil {
		s.idle = map[TopicPartition][]P{}
	}
	ps := append(s.idle[tp], p)
	var evicted []P
	if len(ps) > maxIdlePullers {
		evicted, ps = append(evicted, ps[:len(ps)-maxIdlePullers]...), ps[len(ps)-maxIdlePullers:]
	}
	s.idle[tp] = ps
	s.mu.Unlock()
	for _, e := range evicted {
		e.Close()
	}
}

// Close closes every idle puller; pullers in use are closed when put back.
func (s *Pullers[P]) Close() {
	s.mu.Lock()
	idle := s.idle
	s.idle, s.closed = nil, true
	s.mu.Unlock()
	for _, ps := range idle {
		for _, p := range ps {
			p.Close()
		}
	}
}
