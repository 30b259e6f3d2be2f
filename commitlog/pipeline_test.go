package commitlog

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// syncGates holds segment fsyncs, each until its gate is opened, once
// armed; it counts the segment writes made while armed, and records a
// violation if two writes come with no fsync between them.
type syncGates struct {
	armed     atomic.Bool
	mu        sync.Mutex
	entered   []chan struct{} // closed when the i-th held fsync began
	gates     []chan struct{} // the i-th held fsync waits for this
	syncs     int
	writes    int
	unsynced  int // writes since the last fsync
	violation string
}

func holdSyncs(ffs *vfs.FaultFS, n int) *syncGates {
	s := &syncGates{}
	for range n {
		s.entered = append(s.entered, make(chan struct{}))
		s.gates = append(s.gates, make(chan struct{}))
	}
	ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
		if !s.armed.Load() || !strings.HasSuffix(path, segSuffix) {
			return nil
		}
		s.mu.Lock()
		switch op {
		case vfs.OpWrite:
			s.writes++
			if s.unsynced++; s.unsynced > 1 && s.violation == "" {
				s.violation = fmt.Sprintf("write %d followed another with no fsync between them", s.writes)
			}
		case vfs.OpSync:
			i := s.syncs
			s.syncs++
			s.unsynced = 0
			if i < len(s.gates) {
				s.mu.Unlock()
				close(s.entered[i])
				<-s.gates[i]
				return nil
			}
		}
		s.mu.Unlock()
		return nil
	})
	return s
}

// heldLog opens a log on a FaultFS with topic "t" of config c, its next
// gates segment fsyncs held (holdSyncs, armed) and no zeros written ahead
// (each segment write is a group's). It is closed when the test ends.
func heldLog(t *testing.T, gates int, c TopicConfig) (*Log, *syncGates) {
	t.Helper()
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	l := openTest(t, ffs, WithZeroAhead(false))
	t.Cleanup(func() { l.Close() })
	mustCreate(t, l, "t", c)
	g := holdSyncs(ffs, gates)
	g.armed.Store(true)
	return l, g
}

func (s *syncGates) counts() (writes, syncs int, violation string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes, s.syncs, s.violation
}

// ack records one AppendAsync's outcome.
type ack struct {
	done chan struct{}
	b    *Batch
	err  error
}

func appendAsync(l *Log, m *ferry.Message) *ack {
	a := &ack{done: make(chan struct{})}
	l.AppendAsync(context.Background(), func(b *Batch, err error) { a.b, a.err = b, err; close(a.done) }, m)
	return a
}

func (a *ack) acked() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// The writer encodes the next group while the last one's fsync runs, and
// writes it only after that fsync returned (one batch between two
// fsyncs, as without the pipeline); it acknowledges and shows a group
// only after its own fsync. synctest.Wait lets the log's goroutines run
// until each is blocked, so every check sees the writer as far as it can
// go.
func TestPipelineWritesAGroupOnlyAfterTheLastOnesFsync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, g := heldLog(t, 2, TopicConfig{})
		a := appendAsync(l, msg("t", "", "a"))
		<-g.entered[0] // a's fsync, held
		// A group's worth, so that it is encoded while a's fsync runs
		// (a smaller one waits for that fsync first: pipelineAheadBytes).
		b := appendAsync(l, msg("t", "", strings.Repeat("b", pipelineAheadBytes)))
		synctest.Wait()
		if w, _, v := g.counts(); w != 1 || v != "" {
			t.Fatalf("%d segment writes while the first group's fsync runs (%s), want 1: a second batch written before the first is durable", w, v)
		}
		if a.acked() || b.acked() {
			t.Fatal("acknowledged before any fsync returned")
		}
		if _, hw, _ := l.Bounds("t", 0); hw != 0 {
			t.Fatalf("high watermark %d before any fsync returned, want 0", hw)
		}
		close(g.gates[0])
		<-g.entered[1] // b written, its fsync held
		synctest.Wait()
		if !a.acked() || a.err != nil || b.acked() {
			t.Fatalf("after the first fsync: a acknowledged %v (%v), b acknowledged %v; want a and not b", a.acked(), a.err, b.acked())
		}
		if _, hw, _ := l.Bounds("t", 0); hw != 1 {
			t.Fatalf("high watermark %d with a durable and b not, want 1", hw)
		}
		close(g.gates[1])
		<-b.done
		if b.err != nil || b.b.Messages[0].Offset != 1 {
			t.Fatalf("b: %v at offset %d, want offset 1", b.err, b.b.Messages[0].Offset)
		}
		if _, hw, _ := l.Bounds("t", 0); hw != 2 {
			t.Fatalf("high watermark %d, want 2", hw)
		}
		if _, _, v := g.counts(); v != "" {
			t.Fatal(v)
		}
	})
}

// Many appenders at once: whatever the pipeline does, the disk sees one
// write, then an fsync, then the next write.
func TestPipelineNeverWritesTwoBatchesBetweenFsyncs(t *testing.T) {
	l, g := heldLog(t, 0, TopicConfig{Partitions: 4})
	var wg sync.WaitGroup
	for p := range 16 {
		wg.Go(func() {
			for i := range 50 {
				if err := l.Append(context.Background(), msg("t", fmt.Sprint(p), fmt.Sprint(i))); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if w, s, v := g.counts(); v != "" || w == 0 || s < w {
		t.Fatalf("%d writes, %d fsyncs: %s", w, s, v)
	}
}

// A retry of a message whose first write is still waiting for its fsync
// is a duplicate, and is acknowledged only once that write is durable:
// an acknowledgement before it would let a crash lose what was
// acknowledged.
func TestPipelineDuplicateOfAMessageInFlightWaitsForItsFsync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, g := heldLog(t, 1, TopicConfig{})
		// A group's worth: a smaller retry would wait for the fsync in
		// flight before it is even looked at (see pipelineAheadBytes).
		first := msg("t", "", strings.Repeat("x", pipelineAheadBytes))
		first.ID = ferry.NewID()
		a := appendAsync(l, first)
		<-g.entered[0]
		retry := appendAsync(l, rgCopy(first))
		synctest.Wait() // the writer has handled the retry
		if retry.acked() {
			t.Fatalf("the retry of a message in flight was acknowledged before its fsync (err %v)", retry.err)
		}
		close(g.gates[0])
		for _, x := range []*ack{a, retry} {
			<-x.done
			if x.err != nil {
				t.Fatal(x.err)
			}
		}
		if retry.b.Duplicates != 1 || retry.b.Messages[0].Offset != a.b.Messages[0].Offset {
			t.Fatalf("the retry: %d duplicates at offset %d, want 1 at %d", retry.b.Duplicates, retry.b.Messages[0].Offset, a.b.Messages[0].Offset)
		}
	})
}
