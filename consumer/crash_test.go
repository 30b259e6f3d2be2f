package consumer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/retry"
	"github.com/ferrymq/ferry/vfs"
)

// transform is the handler of the exactly-once crash test: one output per
// input, emitted through the runtime.
func transform(ctx context.Context, m *ferry.Message) error {
	return Emit(ctx, &ferry.Message{Topic: "out", Key: m.Key, Payload: []byte("done " + m.ID.String())})
}

// runPipeline consumes "in" exactly-once into "out" on fs until every input
// was handled or ctx ends. It returns how many inputs were handled.
func runPipeline(ctx context.Context, t *testing.T, fs vfs.FS, inputs map[ferry.ID]bool) int {
	l, err := commitlog.Open(ctx, "/data", commitlog.WithFS(fs))
	if err != nil {
		return 0
	}
	defer l.Close()
	b := embedded.New(l)
	defer b.Close()
	if err := b.EnsureTopic(ctx, "out", 2); err != nil {
		return 0
	}
	store, err := idempotency.OpenLog(ctx, b, "g.processed", time.Hour, 100000)
	if err != nil {
		return 0
	}
	handled := make(chan ferry.ID, len(inputs)*4)
	c, err := New(b, "g", []string{"in"}, transform, WithExactlyOnce(store), WithCommitInterval(5*time.Millisecond),
		WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond}),
		WithObserver(func(e Event) {
			if e.Kind == EventHandled {
				handled <- e.Message.ID
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	seen := map[ferry.ID]bool{}
	// Inputs before the committed offset are not redelivered; count them
	// as handled by an earlier run.
	for p := int32(0); p < 2; p++ {
		if off, ok := l.CommittedOffset("g", "in", p); ok {
			res, _ := l.Read("in", p, 0, commitlog.ReadOpts{MaxMessages: int(off)})
			for _, m := range res.Messages {
				if m.Offset < off {
					seen[m.ID] = true
				}
			}
		}
	}
	for len(seen) < len(inputs) {
		select {
		case id := <-handled:
			seen[id] = true
		case <-ctx.Done():
			cancel()
			<-done
			return len(seen)
		}
	}
	cancel()
	<-done
	return len(seen)
}

// TestExactlyOnceAcrossCrashes crashes the log (power loss on the fault
// filesystem) at random points while the exactly-once pipeline runs, then
// restarts it on what survived: every input ends with exactly one output.
func TestExactlyOnceAcrossCrashes(t *testing.T) {
	setup := func() (*vfs.MemFS, map[ferry.ID]bool) {
		mem := vfs.NewMemFS()
		l, err := commitlog.Open(context.Background(), "/data", commitlog.WithFS(mem))
		if err != nil {
			t.Fatal(err)
		}
		b := embedded.New(l)
		msgs := produce(t, b, "in", 2, 10, 120)
		b.Close()
		l.Close()
		inputs := map[ferry.ID]bool{}
		for _, m := range msgs {
			inputs[m.ID] = true
		}
		return mem, inputs
	}
	// Calibrate the number of filesystem operations of a full run.
	mem, inputs := setup()
	calib := vfs.NewFaultFS(mem)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	runPipeline(ctx, t, calib, inputs)
	cancel()
	total := calib.MutatingOps()
	points := 40
	if testing.Short() {
		points = 10
	}
	for seed := 0; seed < points; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 5))
		mem, inputs := setup()
		ffs := vfs.NewFaultFS(mem)
		ffs.CrashAt(1+rng.Int64N(total), rng)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			for ffs.Crashed() == nil && ctx.Err() == nil {
				time.Sleep(time.Millisecond)
			}
			cancel() // the process died with the disk
		}()
		runPipeline(ctx, t, ffs, inputs)
		cancel()
		img := ffs.Crashed()
		if img == nil {
			img = ffs.Crash(rng)
		}
		ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
		if n := runPipeline(ctx2, t, img, inputs); n != len(inputs) {
			cancel2()
			t.Fatalf("seed %d: after restart only %d of %d inputs handled", seed, n, len(inputs))
		}
		cancel2()
		checkOutputs(t, seed, img, inputs)
	}
}

func checkOutputs(t *testing.T, seed int, fs vfs.FS, inputs map[ferry.ID]bool) {
	t.Helper()
	l, err := commitlog.Open(context.Background(), "/data", commitlog.WithFS(fs), commitlog.WithReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	count := map[string]int{}
	for p := int32(0); p < 2; p++ {
		for off := uint64(0); ; {
			res, err := l.Read("out", p, off, commitlog.ReadOpts{})
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range res.Messages {
				count[string(m.Payload)]++
			}
			if len(res.Messages) == 0 {
				break
			}
			off = res.Next
		}
	}
	for id := range inputs {
		if n := count["done "+id.String()]; n != 1 {
			t.Fatalf("seed %d: input %s has %d outputs, want exactly 1", seed, id, n)
		}
	}
	if len(count) != len(inputs) {
		t.Fatalf("seed %d: %d distinct outputs for %d inputs", seed, len(count), len(inputs))
	}
	_ = fmt.Sprint
}
