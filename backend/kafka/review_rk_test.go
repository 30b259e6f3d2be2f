package kafka_test

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/idempotency"
)

// Adversarial review of 1e263d5 (revokeSig diversion + stopAll releases).

// rkBackend wraps the Kafka backend to record the releases a consumer
// makes and to keep its session for the test.
type rkBackend struct {
	*kafka.Backend
	mu       sync.Mutex
	sess     backend.Session
	released chan backend.TopicPartition
}

type rkSession struct {
	backend.Session
	b     *rkBackend
	leave sync.Once
}

// Leave is made idempotent: the test's cleanup may leave beside Run (the
// backend's Leave is not safe to call twice at once).
func (s *rkSession) Leave() { s.leave.Do(s.Session.Leave) }

func (s *rkSession) Release(tp backend.TopicPartition) {
	s.Session.Release(tp)
	s.b.released <- tp
}

func (b *rkBackend) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	s, err := b.Backend.Join(ctx, group, member, topics)
	if err != nil {
		return nil, err
	}
	w := &rkSession{Session: s, b: b}
	b.mu.Lock()
	b.sess = w
	b.mu.Unlock()
	return w, nil
}

func unwrapRK(s backend.Session) backend.Session {
	if w, ok := s.(*rkSession); ok {
		return w.Session
	}
	return s
}

func (b *rkBackend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	return b.Backend.Commit(ctx, unwrapRK(s), offsets...)
}

func (b *rkBackend) PublishAndCommit(ctx context.Context, s backend.Session, msgs []*ferry.Message, offsets ...backend.Offset) error {
	if s != nil {
		s = unwrapRK(s)
	}
	return b.Backend.PublishAndCommit(ctx, s, msgs, offsets...)
}

// revokeLog signals when franz-go's transact session enters a
// revocation that names partitions (it holds failMu from then on).
type revokeLog struct{ ch chan struct{} }

func (l *revokeLog) Level() kgo.LogLevel { return kgo.LogLevelInfo }
func (l *revokeLog) Log(_ kgo.LogLevel, msg string, _ ...any) {
	if msg == "transact session in on_revoke; aborting next commit if we are currently in a transaction" {
		select {
		case l.ch <- struct{}{}:
		default:
		}
	}
}

// An exactly-once consumer stopping while a rebalance moves one of its
// partitions away hangs for good. stopAll releases each partition as its
// worker stops; a partition whose worker stopped (and was "released")
// before its revocation began is not revoking yet, so that Release is a
// no-op, and the revocation that follows waits for a release that never
// comes (until Leave, which Run calls only after stopAll). Meanwhile
// franz-go's transact-session lock is held by that revocation, the
// member's transaction in offsetLoop waits for it in End, and the other
// worker's final plain commit (a partition not being revoked, so not
// diverted) waits behind offsetLoop: stopAll waits for that worker, Run
// never returns.
//
// Topics x and y (one partition each): a consumes both, b only x, so the
// balancer must move x to b and a keeps y.
func TestReviewRKStoppingExactlyOnceConsumerHangsOnRevocationAfterRelease(t *testing.T) {
	ctx, c, kb := clusterWithTopics(t, map[string]int{"x": 1, "y": 1, "out": 1})
	_ = kb
	logs := &revokeLog{ch: make(chan struct{}, 1)}
	be, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second),
		kafka.WithClientOptions(kgo.WithLogger(logs)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	b := &rkBackend{Backend: be, released: make(chan backend.TopicPartition, 16)}
	x := backend.TopicPartition{Topic: "x"}
	y := backend.TopicPartition{Topic: "y"}

	// The member's second transaction (x's message) is held after its
	// produce, as a slow broker round trip would.
	var txns atomic.Int32
	inTxn, endTxn := make(chan struct{}), make(chan struct{})
	kafka.SetAfterTxnProduce(be, func() {
		if txns.Add(1) == 2 {
			close(inTxn)
			<-endTxn
		}
	})
	store, err := idempotency.OpenLog(ctx, be, "g.processed", time.Hour, 100000)
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	slowStarted := make(chan struct{})
	var fastDone atomic.Int32
	h := func(ctx context.Context, m *ferry.Message) error {
		if string(m.Key) == "slow" {
			close(slowStarted)
			<-gate // slow work that does not watch ctx
		}
		if err := consumer.Emit(ctx, &ferry.Message{Topic: "out", Key: m.Key, Payload: []byte(m.ID.String())}); err != nil {
			return err
		}
		fastDone.Add(1)
		return nil
	}
	cons, err := consumer.New(b, "g", []string{"x", "y"}, h, consumer.WithMember("a"), consumer.WithExactlyOnce(store),
		consumer.WithHeartbeatInterval(50*time.Millisecond), consumer.WithCommitInterval(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done, finished := make(chan error, 1), make(chan struct{})
	go func() { done <- cons.Run(rctx); close(finished) }()
	t.Cleanup(func() {
		// Unwind a hang: Leave ends the revocation's wait.
		b.mu.Lock()
		s := b.sess
		b.mu.Unlock()
		if s != nil {
			s.Leave()
		}
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
		}
	})
	for deadline := time.Now().Add(30 * time.Second); cons.Stats().Partitions != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a did not start both partitions")
		}
	}
	// y: one message handled (its transaction lands: txn 1), one slow.
	if err := b.Publish(ctx, &ferry.Message{Topic: "y", Key: []byte("fast"), Payload: []byte("1")}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); txns.Load() < 1 || fastDone.Load() < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("y's first message was not handled")
		}
	}
	time.Sleep(300 * time.Millisecond) // its transaction ends
	if err := b.Publish(ctx, &ferry.Message{Topic: "y", Key: []byte("slow"), Payload: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	<-slowStarted
	// x: one message, whose transaction (txn 2) is held after its produce.
	if err := b.Publish(ctx, &ferry.Message{Topic: "x", Key: []byte("k"), Payload: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inTxn:
	case <-time.After(30 * time.Second):
		t.Fatal("x's transaction never started")
	}

	// a stops: x's worker stops at once (its handler's publish gives up
	// with its context) and is released; y's waits for its handler.
	stop()
	select {
	case tp := <-b.released:
		if tp != x {
			t.Fatalf("released %v first, want %v", tp, x)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("x was not released")
	}
	// b joins on x only: a is told to let x go.
	be2, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be2.Close() })
	bm, err := be2.Join(ctx, "g", "b", []string{"x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bm.Leave)
	select {
	case <-logs.ch:
	case <-time.After(30 * time.Second):
		t.Fatal("a's revocation of x never began")
	}
	time.Sleep(200 * time.Millisecond)
	close(endTxn) // x's transaction goes on to End: it waits for the revocation
	time.Sleep(200 * time.Millisecond)
	close(gate) // y's handler finishes; its worker commits y and releases it
	select {
	case err := <-done:
		t.Logf("Run returned %v", err)
	case <-time.After(30 * time.Second):
		dumpStacks(t)
		t.Fatalf("Run has not returned 30s after it was stopped (handlers done): x was released before its revocation began (a no-op), the revocation waits for a release that comes only at Leave, holding franz-go's lock; x's transaction waits in End for it, and y's final commit (%v, not revoking) waits behind that transaction, so stopAll never ends", y)
	}
}

// dumpStacks writes the goroutines of this package's code and franz-go's
// transact session to a file, for the report.
func dumpStacks(t *testing.T) {
	var sb strings.Builder
	pprof.Lookup("goroutine").WriteTo(&sb, 2)
	var keep []string
	for _, g := range strings.Split(sb.String(), "\n\n") {
		if strings.Contains(g, "ferry/backend/kafka.") || strings.Contains(g, "ferry/consumer.") || strings.Contains(g, "kgo.(*GroupTransactSession)") {
			keep = append(keep, g)
		}
	}
	f := "/tmp/rev-kafka-stacks-" + t.Name() + ".txt"
	os.WriteFile(f, []byte(strings.Join(keep, "\n\n")), 0o644)
	t.Logf("goroutines written to %s", f)
}

// sessionLog signals each "new group session begun" line whose added
// partitions name a topic.
type sessionLog struct {
	topic string
	ch    chan struct{}
}

func (l *sessionLog) Level() kgo.LogLevel { return kgo.LogLevelInfo }
func (l *sessionLog) Log(_ kgo.LogLevel, msg string, kv ...any) {
	if msg != "new group session begun" {
		return
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == "added" && strings.Contains(fmt.Sprint(kv[i+1]), l.topic) {
			select {
			case l.ch <- struct{}{}:
			default:
			}
		}
	}
}

// Session.Assignments keeps only the latest assignment when the member
// lags; the embedded and JetStream backends therefore free, on their own,
// a partition granted only in an assignment the runtime never took (their
// `known` sets). The Kafka session does not: a partition given to the
// member and taken away again before the runtime read the assignment
// (a consumer busy in stopAll, or briefly starved) is waited for in
// onRevoked until Leave, holding franz-go's transact-session lock and
// the whole group's rebalance. Together with the first test this is
// the same hole from the other side: Release is only ever called for a
// partition the runtime ran, after it started being revoked.
func TestReviewRKRevocationWaitsForAPartitionTheRuntimeNeverSaw(t *testing.T) {
	revokeUnseen(t, false)
}

// Control: the same with the runtime reading the assignment that gave y
// back; it releases y when told to let it go, and c gets it (passes).
func TestReviewRKRevocationOfASeenPartitionControl(t *testing.T) { revokeUnseen(t, true) }

func revokeUnseen(t *testing.T, seen bool) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	logs := &sessionLog{topic: "ly", ch: make(chan struct{}, 1)}
	be, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second), kafka.WithClientOptions(kgo.WithLogger(logs)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	others, err := kafka.New(ctx, c.seeds(), kafka.WithSessionTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { others.Close() })
	for _, topic := range []string{"lx", "ly"} {
		if err := be.EnsureTopic(ctx, topic, 1); err != nil {
			t.Fatal(err)
		}
	}
	x := backend.TopicPartition{Topic: "lx"}
	y := backend.TopicPartition{Topic: "ly"}
	a, err := be.Join(ctx, "lg", "a", []string{"lx", "ly"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Leave)
	waitAssigned(t, a, 2, 30*time.Second) // the runtime runs x and y
	<-logs.ch                             // (the first session's line)

	// b (y only) joins: a lets y go, the runtime releases it.
	bm, err := others.Join(ctx, "lg", "b", []string{"ly"})
	if err != nil {
		t.Fatal(err)
	}
	if got := waitAssigned(t, a, 1, 30*time.Second); got[0] != x {
		t.Fatalf("a kept %v, want %v", got, x)
	}
	a.Release(y)
	waitAssigned(t, bm, 1, 30*time.Second)

	// b leaves: y comes back to a. The runtime is busy and does not read
	// this assignment.
	bm.Leave()
	select {
	case <-logs.ch:
	case <-time.After(30 * time.Second):
		t.Fatal("y never came back to a")
	}
	time.Sleep(300 * time.Millisecond) // onAssigned delivers [x y]
	if seen {
		if got := nextAssigned(t, a, 10*time.Second); !hasPartition(got, y) {
			t.Fatalf("a's assignment %v lacks y", got)
		}
	}

	// c (y only) joins before the runtime looked: y is revoked again.
	cm, err := others.Join(ctx, "lg", "c", []string{"ly"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cm.Leave)
	if seen {
		// The runtime reads its assignments, which soon no longer name
		// y, stops y's worker and releases it.
		var latest []backend.TopicPartition
		deadline := time.After(30 * time.Second)
		for latest == nil || hasPartition(latest, y) {
			select {
			case latest = <-a.Assignments():
			case <-deadline:
				t.Fatalf("a's assignment still names y: %v", latest)
			}
		}
		t.Logf("a's latest assignment: %v", latest)
		a.Release(y)
	}
	// Unseen: the runtime is still busy and reads nothing; a must not
	// wait for it to release a partition it was never told about (had
	// it read an assignment naming y, it would be running y, and the
	// wait would be right). It reads its latest assignment afterwards.
	if !seen {
		defer func() {
			if got := nextAssigned(t, a, 10*time.Second); hasPartition(got, y) {
				t.Errorf("a's latest assignment %v still names y", got)
			}
		}()
	}
	cdeadline := time.After(20 * time.Second)
	for {
		select {
		case got := <-cm.Assignments():
			if hasPartition(got, y) {
				t.Logf("c was given %v", got)
				return
			}
			continue
		case <-cdeadline:
		}
		break
	}
	{
		t.Fatalf("c has not been given %v 20s after it joined: a's onRevoked waits for a Release of a partition the runtime was never told about (Assignments kept only the latest assignment), and holds the rebalance until a leaves", y)
	}
}
