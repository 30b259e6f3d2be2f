package commitlog

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// syncGates holds segment fsyncs, each until its gate is opened, once
// armed; it also signals each segment write made while armed.
type syncGates struct {
	armed   atomic.Bool
	mu      sync.Mutex
	entered []chan struct{} // closed when the i-th held fsync began
	gates   []chan struct{} // the i-th held fsync waits for this
	syncs   int
	writes  chan struct{} // one value per segment write while armed
}

func holdSyncs(ffs *vfs.FaultFS, n int) *syncGates {
	s := &syncGates{writes: make(chan struct{}, 64)}
	for range n {
		s.entered = append(s.entered, make(chan struct{}))
		s.gates = append(s.gates, make(chan struct{}))
	}
	ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
		if !s.armed.Load() || !strings.HasSuffix(path, segSuffix) {
			return nil
		}
		switch op {
		case vfs.OpWrite:
			s.writes <- struct{}{}
		case vfs.OpSync:
			s.mu.Lock()
			i := s.syncs
			s.syncs++
			s.mu.Unlock()
			if i < len(s.gates) {
				close(s.entered[i])
				<-s.gates[i]
			}
		}
		return nil
	})
	return s
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

// The writer writes the next group while the previous one's fsync runs,
// and acknowledges and shows a group only after an fsync that began after
// its write: never with the fsync in flight when it was written.
func TestPipelineAcknowledgesAGroupOnlyAfterAnFsyncBegunAfterItsWrite(t *testing.T) {
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	l := openTest(t, ffs, WithZeroAhead(false)) // each segment write is a group's
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	g := holdSyncs(ffs, 2)
	g.armed.Store(true)
	a := appendAsync(l, msg("t", "", "a"))
	<-g.writes
	<-g.entered[0] // a's fsync, held
	b := appendAsync(l, msg("t", "", "b"))
	<-g.writes // b written while a's fsync runs: the pipeline
	if a.acked() || b.acked() {
		t.Fatal("acknowledged before any fsync returned")
	}
	if _, hw, _ := l.Bounds("t", 0); hw != 0 {
		t.Fatalf("high watermark %d before any fsync returned, want 0", hw)
	}
	close(g.gates[0])
	select {
	case <-b.done:
		t.Fatalf("b acknowledged by the fsync that began before its write (err %v)", b.err)
	case <-g.entered[1]: // b's own fsync, held
	}
	<-a.done
	if a.err != nil || b.acked() {
		t.Fatalf("after the first fsync: a %v, b acknowledged %v; want a acknowledged and b not", a.err, b.acked())
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
}

// A retry of a message whose first write is still waiting for its fsync
// is a duplicate, and is acknowledged only once that write is durable:
// an acknowledgement before it would let a crash lose what was
// acknowledged.
func TestPipelineDuplicateOfAMessageInFlightWaitsForItsFsync(t *testing.T) {
	ffs := vfs.NewFaultFS(vfs.NewMemFS())
	// Each segment write is a group's, and each append a group of its own.
	l := openTest(t, ffs, WithZeroAhead(false), WithMaxGroupBytes(4096))
	defer l.Close()
	mustCreate(t, l, "t", TopicConfig{})
	g := holdSyncs(ffs, 1)
	g.armed.Store(true)
	big := strings.Repeat("x", 4096) // a group's worth
	first := msg("t", "", big)
	first.ID = ferry.NewID()
	a := appendAsync(l, first)
	<-g.entered[0]
	retry := appendAsync(l, rgCopy(first))
	c := appendAsync(l, msg("t", "", big))
	<-g.writes // a
	<-g.writes // c, queued after the retry: the writer has handled the retry
	if retry.acked() {
		t.Fatalf("the retry of a message in flight was acknowledged before its fsync (err %v)", retry.err)
	}
	close(g.gates[0])
	for _, x := range []*ack{a, retry, c} {
		<-x.done
		if x.err != nil {
			t.Fatal(x.err)
		}
	}
	if retry.b.Duplicates != 1 || retry.b.Messages[0].Offset != a.b.Messages[0].Offset {
		t.Fatalf("the retry: %d duplicates at offset %d, want 1 at %d", retry.b.Duplicates, retry.b.Messages[0].Offset, a.b.Messages[0].Offset)
	}
}
