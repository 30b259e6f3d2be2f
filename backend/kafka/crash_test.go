package kafka_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/kafka"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/idempotency"
)

const (
	childSeedsEnv = "FERRY_KAFKA_CHILD_SEEDS"
	childKillEnv  = "FERRY_KAFKA_CHILD_KILL_IN_TXN"
)

func TestMain(m *testing.M) {
	if seeds := os.Getenv(childSeedsEnv); seeds != "" {
		// A pipeline process the parent kills with SIGKILL.
		killAt, _ := strconv.Atoi(os.Getenv(childKillEnv))
		txns := 0
		kill := func() {
			// Outputs and markers of this transaction are in the log,
			// uncommitted: the process dies before it commits.
			if txns++; txns == killAt {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
		err := runPipeline(context.Background(), strings.Split(seeds, ","), kill)
		fmt.Fprintln(os.Stderr, "child pipeline ended:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// transform emits one output per input, in the input's transaction,
// taking a little time as real work does.
func transform(ctx context.Context, m *ferry.Message) error {
	time.Sleep(2 * time.Millisecond)
	return consumer.Emit(ctx, &ferry.Message{Topic: "out", Key: m.Key, Payload: []byte(m.ID.String())})
}

// runPipeline consumes "in" into "out" exactly once as member "worker"
// (the same transactional ID in every process) until ctx ends.
func runPipeline(ctx context.Context, seeds []string, inTxn func()) error {
	b, err := kafka.New(ctx, seeds, kafka.WithSessionTimeout(time.Second))
	if err != nil {
		return err
	}
	defer b.Close()
	if inTxn != nil {
		kafka.SetAfterTxnProduce(b, inTxn)
	}
	store, err := idempotency.OpenLog(ctx, b, "g.processed", time.Hour, 100000)
	if err != nil {
		return err
	}
	c, err := consumer.New(b, "g", []string{"in"}, transform, consumer.WithMember("worker"),
		consumer.WithExactlyOnce(store), consumer.WithConcurrency(16), consumer.WithCommitInterval(20*time.Millisecond))
	if err != nil {
		return err
	}
	return c.Run(ctx)
}

// Processes running the exactly-once pipeline die by SIGKILL inside a
// transaction (its outputs and markers written, not committed), after a
// random number of committed ones; a last process finishes. Every input has exactly one output: the
// outputs of a killed process's open transaction are aborted when its
// successor fences it, and a committed input is skipped by its marker.
func TestExactlyOnceSurvivesKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := kafka.New(ctx, c.seeds())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for topic, n := range map[string]int{"in": 3, "out": 2} {
		if err := b.EnsureTopic(ctx, topic, n); err != nil {
			t.Fatal(err)
		}
	}
	const inputs = 600
	var batch []*ferry.Message
	for i := range inputs {
		batch = append(batch, &ferry.Message{Topic: "in", Key: fmt.Appendf(nil, "k%d", i%40), Payload: fmt.Appendf(nil, "%d", i)})
	}
	if err := b.Publish(ctx, batch...); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childSeedsEnv+"="+strings.Join(c.seeds(), ","), fmt.Sprintf("%s=%d", childKillEnv, 2+rng.IntN(8)))
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err == nil {
			t.Fatal("the child pipeline was not killed")
		}
		t.Logf("round %d: killed with %d outputs committed", round, len(readOutputs(t, b)))
	}
	pctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runPipeline(pctx, c.seeds(), nil) }()
	var outs map[string]int
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		outs = readOutputs(t, b)
		if len(outs) >= inputs || time.Now().After(deadline) {
			break
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("final pipeline: %v", err)
	}
	dups := 0
	for in, n := range outs {
		if n != 1 {
			dups++
			t.Errorf("input %s: %d outputs", in, n)
		}
	}
	if len(outs) != inputs || dups > 0 {
		t.Fatalf("%d of %d inputs have outputs, %d of them more than one", len(outs), inputs, dups)
	}
}

// readOutputs counts the committed outputs per input.
func readOutputs(t *testing.T, b backend.Backend) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	outs := map[string]int{}
	for p := range int32(2) {
		tp := backend.TopicPartition{Topic: "out", Partition: p}
		_, end, err := b.Bounds(ctx, tp)
		if err != nil {
			t.Fatal(err)
		}
		for off := uint64(0); off < end; {
			res, err := b.Fetch(ctx, tp, off, 500)
			if err != nil {
				t.Fatalf("read outputs at %d (end %d): %v", off, end, err)
			}
			for _, m := range res.Messages {
				outs[string(m.Payload)]++
			}
			off = res.Next
		}
	}
	return outs
}
