package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// session is one member of a Kafka consumer group: a franz-go group
// client that fetches nothing itself (its topics are paused; the runtime
// reads through Fetch) and reports its partitions to the runtime.
type session struct {
	b      *Backend
	group  string
	member string
	cl     *kgo.Client
	assign chan []backend.TopicPartition

	mu       sync.Mutex
	owned    map[backend.TopicPartition]bool // commits allowed
	revoking map[backend.TopicPartition]bool // told to let go, not released yet
	released chan backend.TopicPartition
	leaving  bool
	gone     bool
}

// Join implements backend.Backend.
func (b *Backend) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	if group == "" || member == "" || len(topics) == 0 {
		return nil, fmt.Errorf("kafka: join needs a group, a member and topics: %w", ferry.ErrInvalidArgument)
	}
	for _, t := range topics {
		if _, err := b.Partitions(ctx, t); err != nil {
			return nil, err
		}
	}
	s := &session{b: b, group: group, member: member, assign: make(chan []backend.TopicPartition, 1),
		owned: map[backend.TopicPartition]bool{}, revoking: map[backend.TopicPartition]bool{}, released: make(chan backend.TopicPartition, 1024)}
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(b.seeds...),
		kgo.ClientID(member),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.DisableAutoCommit(),
		kgo.SessionTimeout(b.cfg.sessionTimeout),
		kgo.HeartbeatInterval(max(b.cfg.sessionTimeout/10, 100*time.Millisecond)),
		kgo.OnPartitionsAssigned(s.onAssigned),
		kgo.OnPartitionsRevoked(s.onRevoked),
		kgo.OnPartitionsLost(s.onLost),
	}, b.cfg.extra...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: join %s as %s: %w", group, member, err)
	}
	cl.PauseFetchTopics(topics...)
	s.cl = cl
	// The group client joins on its first poll; the poll returns nothing
	// (every topic is paused) and the rest runs in the background.
	go s.pollLoop()
	return s, nil
}

// pollLoop keeps the client's consumer alive; fetching is paused, so it
// only drives group management.
func (s *session) pollLoop() {
	for {
		fs := s.cl.PollFetches(context.Background())
		if fs.IsClientClosed() {
			return
		}
	}
}

func flatten(m map[string][]int32) []backend.TopicPartition {
	var out []backend.TopicPartition
	for t, ps := range m {
		for _, p := range ps {
			out = append(out, backend.TopicPartition{Topic: t, Partition: p})
		}
	}
	return out
}

// deliverLocked tells the runtime its partitions: owned ones not being
// revoked.
func (s *session) deliverLocked() {
	if s.gone {
		return
	}
	var mine []backend.TopicPartition
	for tp := range s.owned {
		if !s.revoking[tp] {
			mine = append(mine, tp)
		}
	}
	backend.SortPartitions(mine)
	select {
	case <-s.assign:
	default:
	}
	s.assign <- mine
}

func (s *session) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tp := range flatten(assigned) {
		s.owned[tp] = true
		delete(s.revoking, tp)
	}
	s.deliverLocked()
}

// onRevoked runs inside the rebalance: the runtime is told to let the
// partitions go, and the rebalance waits until it released each one
// (after draining and committing), so the next owner starts where it
// stopped.
func (s *session) onRevoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	tps := flatten(revoked)
	s.mu.Lock()
	if s.leaving {
		for _, tp := range tps {
			delete(s.owned, tp)
		}
		s.mu.Unlock()
		return
	}
	waiting := map[backend.TopicPartition]bool{}
	for _, tp := range tps {
		if s.owned[tp] {
			s.revoking[tp] = true
			waiting[tp] = true
		}
	}
	s.deliverLocked()
	s.mu.Unlock()
	timeout := time.After(s.b.cfg.sessionTimeout)
	for len(waiting) > 0 {
		select {
		case tp := <-s.released:
			delete(waiting, tp)
		case <-ctx.Done():
			waiting = nil
		case <-timeout:
			waiting = nil // the runtime is stuck; Kafka's rebalance cannot wait forever
		}
	}
	s.mu.Lock()
	for _, tp := range tps {
		delete(s.owned, tp)
		delete(s.revoking, tp)
	}
	s.mu.Unlock()
}

func (s *session) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tp := range flatten(lost) {
		delete(s.owned, tp)
		delete(s.revoking, tp)
	}
	s.deliverLocked()
}

func (s *session) Group() string                                { return s.group }
func (s *session) Member() string                               { return s.member }
func (s *session) Assignments() <-chan []backend.TopicPartition { return s.assign }

// Release implements backend.Session.
func (s *session) Release(tp backend.TopicPartition) {
	s.mu.Lock()
	revoking := s.revoking[tp]
	s.mu.Unlock()
	if revoking {
		select {
		case s.released <- tp:
		default:
		}
	}
}

// Heartbeat implements backend.Session; franz-go heartbeats on its own.
func (s *session) Heartbeat() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone {
		return fmt.Errorf("kafka: member %q of group %q: %w", s.member, s.group, backend.ErrSessionExpired)
	}
	return nil
}

// Leave implements backend.Session: the member leaves the group at once.
func (s *session) Leave() {
	s.mu.Lock()
	if s.gone {
		s.mu.Unlock()
		return
	}
	s.leaving = true
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.cl.LeaveGroupContext(ctx)
	s.cl.Close()
	s.mu.Lock()
	s.gone = true
	s.owned = map[backend.TopicPartition]bool{}
	close(s.assign)
	s.mu.Unlock()
}

// Commit implements backend.Backend.
func (b *Backend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	sess, ok := s.(*session)
	if !ok || sess.b != b {
		return fmt.Errorf("kafka: session from another backend: %w", ferry.ErrInvalidArgument)
	}
	commit := map[string]map[int32]kgo.EpochOffset{}
	sess.mu.Lock()
	for _, o := range offsets {
		if sess.gone || !sess.owned[o.TopicPartition] {
			sess.mu.Unlock()
			return fmt.Errorf("kafka: commit %s/%d by %s: %w", o.Topic, o.Partition, sess.member, backend.ErrFenced)
		}
		if commit[o.Topic] == nil {
			commit[o.Topic] = map[int32]kgo.EpochOffset{}
		}
		commit[o.Topic][o.Partition] = kgo.EpochOffset{Epoch: -1, Offset: int64(o.Offset)}
	}
	sess.mu.Unlock()
	if len(commit) == 0 {
		return nil
	}
	var cerr error
	sess.cl.CommitOffsetsSync(ctx, commit, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerr.ErrorForCode(p.ErrorCode); e != nil && cerr == nil {
					cerr = e
				}
			}
		}
	})
	switch {
	case cerr == nil:
		return nil
	case errors.Is(cerr, kerr.IllegalGeneration), errors.Is(cerr, kerr.UnknownMemberID),
		errors.Is(cerr, kerr.RebalanceInProgress), errors.Is(cerr, kerr.FencedInstanceID):
		return fmt.Errorf("kafka: commit by %s: %v: %w", sess.member, cerr, backend.ErrFenced)
	default:
		return fmt.Errorf("kafka: commit by %s: %w", sess.member, cerr)
	}
}
