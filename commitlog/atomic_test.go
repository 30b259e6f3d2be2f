package commitlog

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// TestAtomicBatchCrashSweep crashes while producers commit batches that
// span two topics, several partitions and a consumer offset, and checks
// after recovery that every batch is there whole or not at all, and that
// every acknowledged batch is there.
func TestAtomicBatchCrashSweep(t *testing.T) {
	const producers, batches = 3, 15
	run := func(fs vfs.FS, acked *sync.Map) {
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(fs)}, smallSegments...)...)
		if err != nil {
			return
		}
		defer l.Close()
		if l.CreateTopic(context.Background(), "out", TopicConfig{Partitions: 3}) != nil || l.CreateTopic(context.Background(), "audit", TopicConfig{}) != nil {
			return
		}
		var wg sync.WaitGroup
		for p := 0; p < producers; p++ {
			wg.Add(1)
			go func(p int) {
				defer wg.Done()
				for s := 0; s < batches; s++ {
					tag := fmt.Sprintf("%d-%d", p, s)
					b := &Batch{Group: "g" + strconv.Itoa(p), Offsets: []Offset{{Topic: "out", Partition: int32(p % 3), Offset: uint64(s + 1)}}}
					for k := 0; k < 4; k++ {
						b.Messages = append(b.Messages, &ferry.Message{Topic: "out", Key: []byte(strconv.Itoa(k)), Payload: []byte(tag)})
					}
					b.Messages = append(b.Messages, &ferry.Message{Topic: "audit", Payload: []byte(tag)})
					if err := l.Commit(context.Background(), b); err != nil {
						return
					}
					acked.Store(tag, true)
				}
			}(p)
		}
		wg.Wait()
	}
	calib := vfs.NewFaultFS(vfs.NewMemFS())
	run(calib, &sync.Map{})
	total := calib.MutatingOps()
	points := crashPoints() / 4
	for seed := 0; seed < points; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 21))
		ffs := vfs.NewFaultFS(vfs.NewMemFS())
		var cloneRand *rand.Rand
		if seed%2 == 1 {
			cloneRand = rng
		}
		ffs.CrashAt(1+rng.Int64N(total), cloneRand)
		var acked sync.Map
		run(ffs, &acked)
		crashed := ffs.Crashed()
		if crashed == nil {
			crashed = ffs.Crash(cloneRand)
		}
		l, err := Open(context.Background(), testDir, append([]Opt{WithFS(crashed)}, smallSegments...)...)
		if err != nil {
			t.Fatalf("seed %d: reopen: %v", seed, err)
		}
		counts := map[string]int{}
		if _, err := l.Topic("out"); err == nil {
			for p := int32(0); p < 3; p++ {
				for _, m := range readAll(t, l, "out", p) {
					counts[string(m.Payload)]++
				}
			}
		}
		audit := map[string]int{}
		if _, err := l.Topic("audit"); err == nil {
			for _, m := range readAll(t, l, "audit", 0) {
				audit[string(m.Payload)]++
			}
		}
		for tag, n := range counts {
			if n != 4 || audit[tag] != 1 {
				t.Fatalf("seed %d: batch %s partially present: %d of 4 outputs, %d audit records", seed, tag, n, audit[tag])
			}
		}
		for tag := range audit {
			if counts[tag] != 4 {
				t.Fatalf("seed %d: audit record %s without its outputs", seed, tag)
			}
		}
		acked.Range(func(k, _ any) bool {
			if counts[k.(string)] != 4 {
				t.Fatalf("seed %d: acknowledged batch %s lost", seed, k)
			}
			return true
		})
		// The committed offset of each group matches its last batch present.
		for p := 0; p < producers; p++ {
			last := 0
			for s := 0; s < batches; s++ {
				if counts[fmt.Sprintf("%d-%d", p, s)] == 4 {
					last = s + 1
				}
			}
			off, ok := l.CommittedOffset("g"+strconv.Itoa(p), "out", int32(p%3))
			if (last == 0 && ok) || (last > 0 && (!ok || off != uint64(last))) {
				t.Fatalf("seed %d: group g%d offset %d (%v), last batch present %d", seed, p, off, ok, last)
			}
		}
		l.Close()
	}
}
