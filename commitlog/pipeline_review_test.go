package commitlog

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// An adversarial review of the pipelined group commit wrote these (the
// first, and a crash image that the first version of the pipeline could
// leave and recovery refused as corruption: two batches written between
// two fsyncs, the earlier torn; the pipeline now writes one batch per
// fsync, which TestPipelineNeverWritesTwoBatchesBetweenFsyncs checks).

// A refused append's promise is called after the promises of the appends
// before it, as for any other (in append order).
func TestPipelinePromisesInAppendOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l, g := heldLog(t, 1, TopicConfig{})
		var order []string
		var mu sync.Mutex
		rec := func(name string) func(*Batch, error) {
			return func(*Batch, error) {
				mu.Lock()
				order = append(order, name)
				mu.Unlock()
			}
		}
		l.AppendAsync(context.Background(), rec("first"), msg("t", "", "a"))
		<-g.entered[0] // first's fsync is running
		// A group's worth: a smaller one would wait for the fsync in
		// flight before it is even looked at (see pipelineAheadBytes).
		l.AppendAsync(context.Background(), rec("second"), msg("no-such-topic", "", strings.Repeat("b", pipelineAheadBytes)))
		synctest.Wait()
		close(g.gates[0])
		if err := l.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(order) != "[first second]" {
			t.Fatalf("promises called in order %v, want append order [first second]", order)
		}
	})
}

// The fsync of A fails with EIO while B, a duplicate of A and C wait
// behind it: neither may be acknowledged, later
// appends are refused, Close reports the failure, and the log reopens
// (on what the OS kept, and on a strict crash image) with everything
// acknowledged before.
func TestPipelineFsyncErrorWithGroupsInFlight(t *testing.T) {
	ctx := context.Background()
	mem := vfs.NewMemFS()
	ffs := vfs.NewFaultFS(mem)
	l := openTest(t, ffs, WithZeroAhead(false))
	mustCreate(t, l, "t", TopicConfig{DedupWindow: time.Hour, DedupMaxIDs: 100})
	acked := msg("t", "", "acked")
	acked.ID = ferry.NewID()
	if err := l.Append(ctx, acked); err != nil {
		t.Fatal(err)
	}
	var armed, failOne atomic.Bool
	failOne.Store(true)
	entered, gate := make(chan struct{}), make(chan struct{})
	writes := make(chan struct{}, 16)
	ffs.SetInjector(func(op vfs.Op, path string, _ int64) error {
		if !armed.Load() || !strings.HasSuffix(path, segSuffix) {
			return nil
		}
		switch op {
		case vfs.OpWrite:
			writes <- struct{}{}
		case vfs.OpSync:
			if failOne.CompareAndSwap(true, false) {
				close(entered)
				<-gate
				return vfs.EIO
			}
		}
		return nil
	})
	armed.Store(true)
	a := msg("t", "", "a")
	a.ID = ferry.NewID()
	aa := appendAsync(l, a)
	<-writes
	<-entered
	bb := appendAsync(l, msg("t", "", "b")) // encoded behind A, in flight
	dup := appendAsync(l, rgCopy(a))        // a duplicate of A, in flight
	cc := appendAsync(l, msg("t", "", "c"))
	armed.Store(false)
	close(gate)
	for name, x := range map[string]*ack{"a": aa, "b": bb, "dup": dup, "c": cc} {
		<-x.done
		if x.err == nil {
			t.Errorf("%s acknowledged although the fsync covering it failed", name)
		}
	}
	if err := l.Append(ctx, msg("t", "", "later")); err == nil {
		t.Error("append after a failed fsync acknowledged")
	}
	if _, hw, _ := l.Bounds("t", 0); hw != 1 {
		t.Errorf("high watermark %d after the failed fsync, want 1", hw)
	}
	if err := l.Close(); err == nil {
		t.Error("Close after a failed fsync reported no error")
	}
	img := mem.CrashClone(nil)
	for name, fs := range map[string]vfs.FS{"same fs": mem, "crash image": img} {
		l2, err := Open(ctx, testDir, WithFS(fs))
		if err != nil {
			t.Fatalf("%s: reopen: %v", name, err)
		}
		ms := readAll(t, l2, "t", 0)
		if len(ms) == 0 || string(ms[0].Payload) != "acked" {
			t.Errorf("%s: the acknowledged append is lost: %d messages", name, len(ms))
		}
		if err := l2.Append(ctx, msg("t", "", "after")); err != nil {
			t.Errorf("%s: append after reopen: %v", name, err)
		}
		l2.Close()
	}
}

// Many async appenders with slow
// fsyncs and small segments, Close in the middle: Close returns, every
// promise is called once, everything acknowledged survives a strict power
// loss right after Close, and no goroutine of the log is left.
func TestPipelineCloseWithGroupsInFlight(t *testing.T) {
	for iter := 0; iter < 10; iter++ {
		before := runtime.NumGoroutine()
		ctx := context.Background()
		mem := vfs.NewMemFS()
		ffs := vfs.NewFaultFS(mem)
		l := openTest(t, ffs, smallSegments...)
		mustCreate(t, l, "t", TopicConfig{Partitions: 3, DedupWindow: time.Hour, DedupMaxIDs: 10000})
		ffs.SetSyncDelay(200 * time.Microsecond)
		var mu sync.Mutex
		acked := map[ferry.ID]string{}
		var calls atomic.Int64
		var sent atomic.Int64
		var wg sync.WaitGroup
		for p := 0; p < 6; p++ {
			wg.Add(1)
			go func(p int) {
				defer wg.Done()
				for s := 0; s < 200; s++ {
					m := msg("t", fmt.Sprint("k", p), strings.Repeat("x", 50+s%700))
					m.ID = ferry.NewID()
					sent.Add(1)
					l.AppendAsync(ctx, func(b *Batch, err error) {
						calls.Add(1)
						if err == nil {
							mu.Lock()
							acked[b.Messages[0].ID] = string(b.Messages[0].Payload)
							mu.Unlock()
						}
					}, m)
					if s%7 == 0 { // a retry of the same ID
						sent.Add(1)
						l.AppendAsync(ctx, func(*Batch, error) { calls.Add(1) }, rgCopy(m))
					}
				}
			}(p)
		}
		time.Sleep(time.Duration(iter) * time.Millisecond)
		done := make(chan error)
		go func() { done <- l.Close() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("close: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Close hangs with groups in flight")
		}
		wg.Wait()
		if c, s := calls.Load(), sent.Load(); c != s {
			t.Fatalf("%d promises called for %d appends", c, s)
		}
		img := mem.CrashClone(nil)
		l2, err := Open(ctx, testDir, WithFS(img))
		if err != nil {
			t.Fatal(err)
		}
		have := map[ferry.ID]int{}
		for part := int32(0); part < 3; part++ {
			for _, m := range readAll(t, l2, "t", part) {
				have[m.ID]++
			}
		}
		for id := range acked {
			if have[id] != 1 {
				t.Fatalf("iter %d: acknowledged %s present %d times after Close and power loss", iter, id, have[id])
			}
		}
		l2.Close()
		time.Sleep(20 * time.Millisecond)
		if after := runtime.NumGoroutine(); after > before {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
		}
	}
}
