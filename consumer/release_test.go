package consumer

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// releaseLog wraps a backend to record, per member, the partitions its
// session released before it left.
type releaseLog struct {
	backend.Backend
	mu       sync.Mutex
	released map[string][]backend.TopicPartition // by member, before Leave
	left     map[string]bool
}

func (r *releaseLog) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	s, err := r.Backend.Join(ctx, group, member, topics)
	if err != nil {
		return nil, err
	}
	return &releaseLogSession{Session: s, r: r}, nil
}

func (r *releaseLog) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	if ls, ok := s.(*releaseLogSession); ok {
		s = ls.Session
	}
	return r.Backend.Commit(ctx, s, offsets...)
}

type releaseLogSession struct {
	backend.Session
	r *releaseLog
}

func (s *releaseLogSession) Release(tp backend.TopicPartition) {
	s.r.mu.Lock()
	if !s.r.left[s.Member()] {
		s.r.released[s.Member()] = append(s.r.released[s.Member()], tp)
	}
	s.r.mu.Unlock()
	s.Session.Release(tp)
}

func (s *releaseLogSession) Leave() {
	s.r.mu.Lock()
	s.r.left[s.Member()] = true
	s.r.mu.Unlock()
	s.Session.Leave()
}

// A consumer that stops while a revoked partition is still stopping
// releases that partition as soon as its worker stopped, not at Leave.
// On Kafka the revocation callback holds franz-go's transact-session lock
// until the release, the member's queued commits wait behind that lock,
// and Run waits for those commits before it leaves: before the fix a
// consumer stopped mid-revocation hung there for good (seen in CI as a
// 10-minute timeout of the Kafka conformance suite).
func TestStoppingConsumerReleasesARevokedPartitionBeforeLeaving(t *testing.T) {
	b := &releaseLog{Backend: newBackend(t), released: map[string][]backend.TopicPartition{}, left: map[string]bool{}}
	ctx := context.Background()
	if err := b.EnsureTopic(ctx, "in", 2); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	canceled := make(chan int32, 2) // partitions whose handler saw its context end
	started := make(chan int32, 2)
	handler := func(ctx context.Context, m *ferry.Message) error {
		started <- m.Partition
		<-ctx.Done()
		canceled <- m.Partition
		<-gate // a slow handler that finishes after it was told to stop
		return nil
	}
	a, err := New(b, "g", []string{"in"}, handler, WithMember("a"), WithCommitInterval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	actx, cancelA := context.WithCancel(ctx)
	defer cancelA()
	aDone := make(chan error, 1)
	go func() { aDone <- a.Run(actx) }()
	for p := range int32(2) {
		if err := b.Publish(ctx, &ferry.Message{Topic: "in", Partition: p, Key: fmt.Appendf(nil, "k%d", p), Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	<-started
	<-started
	// Member b joins: a is told to let one partition go, whose handler
	// does not finish yet.
	bs, err := b.Backend.Join(ctx, "g", "b", []string{"in"})
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Leave()
	revoked := <-canceled
	// a stops while that partition is still stopping.
	cancelA()
	<-canceled
	close(gate)
	if err := <-aDone; err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, tp := range b.released["a"] {
		if tp.Partition == revoked {
			return
		}
	}
	t.Fatalf("member a stopped with partition %d revoked and stopping, and left without releasing it (released before Leave: %v)", revoked, b.released["a"])
}

// A key whose dead letter is in the index while its reservation has not
// ended yet counts once against the parked-key bound. Counted twice, it
// left keys waiting for room that was there, and nothing woke them when
// the reservation ended (TestParkedKeysBounded failed about 1 run in 20
// under a CPU hog).
func TestParkedKeyIndexedAndReservedCountsOnce(t *testing.T) {
	b := newBackend(t)
	if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
		t.Fatal(err)
	}
	rec := &handling{}
	handler, _ := poisonUntilFixed(rec)
	c, _ := startConsumer(t, b, handler, WithMaxParkedKeys(2))
	publish(t, b, "b/0", "free/0")
	waitFor(t, "b parked and counted", func() bool { return c.Stats().ParkedKeys == 1 && rec.handled("free/0") })
	c.mu.Lock()
	w := c.workers[backend.TopicPartition{Topic: "in"}]
	c.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.reserved["b"] = true // b's reservation, not ended yet
	if !w.roomLocked([]byte("a")) {
		t.Fatal("with one key parked (and reserved) of a bound of 2, key a finds no room to park")
	}
	w.reserved["c"] = true
	if w.roomLocked([]byte("a")) {
		t.Fatal("with b parked and c reserved, a bound of 2 leaves room for a")
	}
}
