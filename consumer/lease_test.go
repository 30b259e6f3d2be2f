package consumer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// pausable wraps a backend so that a test can stop one member's
// heartbeats for as long as it likes, as a SIGSTOP or a stalled host
// would: its Heartbeat calls block until resume, while its handlers and
// fetches go on (the part of the process that is not paused).
type pausable struct {
	backend.Backend
	mu     sync.Mutex
	member string        // whose heartbeats are paused
	paused chan struct{} // non-nil while paused; closed by resume
}

func (p *pausable) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	s, err := p.Backend.Join(ctx, group, member, topics)
	if err != nil {
		return nil, err
	}
	return &pausedSession{Session: s, p: p}, nil
}

func (p *pausable) pause(member string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.member, p.paused = member, make(chan struct{})
}

func (p *pausable) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.paused)
	p.paused = nil
}

type pausedSession struct {
	backend.Session
	p *pausable
}

func (s *pausedSession) Heartbeat() error {
	s.p.mu.Lock()
	ch := s.p.paused
	if s.Member() != s.p.member {
		ch = nil
	}
	s.p.mu.Unlock()
	if ch != nil {
		<-ch
	}
	return s.Session.Heartbeat()
}

// Commit and PublishAndCommit take the session the backend gave out.
func (p *pausable) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	if ps, ok := s.(*pausedSession); ok {
		s = ps.Session
	}
	return p.Backend.Commit(ctx, s, offsets...)
}

// Defect 17: a member whose heartbeats stop for longer than its session
// timeout loses its partition to another member, and must start nothing
// more on it. Without the lease check its lane went on starting the key's
// next messages beside the new owner (fencing happened only at commit).
func TestRegress16PausedMemberStartsNothingAfterItsLease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := &pausable{Backend: newBackend(t)} // session timeout 2s
		if err := b.EnsureTopic(context.Background(), "in", 1); err != nil {
			t.Fatal(err)
		}
		type call struct {
			member string
			p      string
			at     time.Time
		}
		var mu sync.Mutex
		var calls []call
		handler := func(member string) Handler {
			return func(ctx context.Context, m *ferry.Message) error {
				mu.Lock()
				calls = append(calls, call{member, string(m.Payload), time.Now()})
				mu.Unlock()
				select {
				case <-time.After(50 * time.Millisecond):
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		opts := []Opt{WithHeartbeatInterval(100 * time.Millisecond), WithCommitInterval(10 * time.Millisecond)}
		a, err := New(b, "g", []string{"in"}, handler("a"), append(opts, WithMember("a"))...)
		if err != nil {
			t.Fatal(err)
		}
		actx, cancelA := context.WithCancel(context.Background())
		defer cancelA()
		aDone := make(chan error, 1)
		go func() { aDone <- a.Run(actx) }()
		for i := range 200 {
			if err := b.Publish(context.Background(), &ferry.Message{Topic: "in", Key: []byte("k"), Payload: fmt.Appendf(nil, "k/%d", i)}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Second) // a handles about 20
		b.pause("a")
		_, stopB := startConsumer(t, b, handler("b"), append(opts, WithMember("b"))...)
		time.Sleep(5 * time.Second) // a's session expires after 2s; b takes over
		b.resume()
		if err := <-aDone; !errors.Is(err, backend.ErrSessionExpired) {
			t.Fatalf("member a after its session expired: Run returned %v, want ErrSessionExpired", err)
		}
		time.Sleep(time.Second)
		stopB()

		mu.Lock()
		defer mu.Unlock()
		var firstB time.Time
		for _, c := range calls {
			if c.member == "b" {
				firstB = c.at
				break
			}
		}
		if firstB.IsZero() {
			t.Fatalf("member b never ran the partition (%d calls, all by a)", len(calls))
		}
		var late []string
		for _, c := range calls {
			if c.member == "a" && !c.at.Before(firstB) {
				late = append(late, fmt.Sprintf("%s at +%v", c.p, c.at.Sub(firstB)))
			}
		}
		if len(late) > 0 {
			t.Fatalf("member a started %d messages after b took its partition over: %v", len(late), late)
		}
	})
}
