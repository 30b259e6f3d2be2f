package kafka_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
)

// syncCommits counts franz-go's "in CommitOffsetsSync" debug lines: one
// per CommitOffsetsSync call, logged before it waits for the commit ahead
// of it.
type syncCommits struct{ n atomic.Int32 }

func (l *syncCommits) Level() kgo.LogLevel { return kgo.LogLevelDebug }
func (l *syncCommits) Log(_ kgo.LogLevel, msg string, _ ...any) {
	if msg == "in CommitOffsetsSync" {
		l.n.Add(1)
	}
}

// The revoking partition's commit bypasses offsetLoop, so it can run
// beside a commit offsetLoop is sending for the same partition (a call
// that named the revoking partition with one that is not, or that came
// just before the revocation began). Each checks landed before it sends,
// neither sees the other's, and franz-go sends them in the order they
// reached its commit lock: the bypassed commit of 12 lands, then the
// queued one of 10, and the group goes back within the session. Fixed:
// plain commits run one at a time, from the check to raising landed.
func TestReviewBypassCommitRacesQueuedCommit(t *testing.T) {
	logs := &syncCommits{}
	be, a, _, kept := revokingPair(t, "bp", kafka.WithSessionTimeout(2*time.Second),
		kafka.WithClientOptions(kgo.WithLogger(logs)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rev := backend.TopicPartition{Topic: "bp", Partition: 1 - kept.Partition}

	// The revoking partition's final commit, slow on the wire.
	inFinal, sendFinal := make(chan struct{}), make(chan struct{})
	fctx := kgo.PreCommitFnContext(ctx, func(*kmsg.OffsetCommitRequest) error {
		close(inFinal)
		<-sendFinal
		return nil
	})
	finalDone := make(chan error, 1)
	go func() { finalDone <- be.Commit(fctx, a, backend.Offset{TopicPartition: rev, Offset: 12}) }()
	<-inFinal
	// A commit through offsetLoop naming both partitions (older offset of
	// the revoking one).
	before := logs.n.Load()
	queuedDone := make(chan error, 1)
	go func() {
		queuedDone <- be.Commit(ctx, a, backend.Offset{TopicPartition: kept, Offset: 5}, backend.Offset{TopicPartition: rev, Offset: 10})
	}()
	// Before the fix the queued commit reached CommitOffsetsSync here and
	// was sent after the final one; now it waits for it (one plain commit
	// at a time). Give it a second to show either way: the outcome checked
	// below does not depend on how long this takes.
	for deadline := time.Now().Add(time.Second); logs.n.Load() == before && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
	}
	close(sendFinal)
	if err := <-finalDone; err != nil {
		t.Fatal(err)
	}
	if err := <-queuedDone; err != nil {
		t.Fatal(err)
	}
	if off, _, err := be.Committed(ctx, "bp-g", rev); err != nil || off != 12 {
		t.Fatalf("%v committed at %d (%v) after the session committed 12 there: the group went back", rev, off, err)
	}
}
