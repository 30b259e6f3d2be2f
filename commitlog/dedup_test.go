package commitlog

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
)

// The dedup window against a model of what it promises, over random
// sequences of inserts (new IDs, repeats, sequential IDs), lookups and
// clock steps, with windows small enough to rotate generations and grow
// tables often:
//   - an ID among the last max inserts, whose last insert is within the
//     window, is found, unless a lookup since saw it expired (a clock
//     stepped back after it stepped forward: the window forgot it, as it
//     may);
//   - a hit is the ID's last insert, within the window: never an older
//     insert, never an ID not inserted;
//   - the window holds at most 2×max IDs.
//
// Deterministic by seed; a failure names its seed.
func TestDedupWindowOracle(t *testing.T) {
	for seed := uint64(1); seed <= 300; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { dedupOracle(t, seed) })
	}
}

func dedupOracle(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	maxIDs := 1 + rng.IntN(40)
	if seed%10 == 0 {
		maxIDs = 1000 + rng.IntN(3000) // tables that grow through several sizes
	}
	window := time.Duration(1+rng.IntN(100)) * time.Second
	w := newDedupWindow(window, maxIDs)
	type insert struct {
		call    int
		lookups int // lookups before it
		hit     dedupHit
	}
	// The lookups' cutoffs, as a stack of decreasing ones: the first at
	// or after a lookup's index is the highest cutoff since it.
	type cut struct {
		lookup int
		at     int64
	}
	var cuts []cut
	lookups := 0
	last := map[ferry.ID]insert{}
	var ids []ferry.ID
	now := int64(1_000_000) * int64(time.Second)
	calls := 0
	newID := func() ferry.ID {
		if rng.IntN(2) == 0 {
			return ferry.NewID()
		}
		var id ferry.ID // sequential, not random
		id[15], id[14], id[13] = byte(len(ids)), byte(len(ids)>>8), byte(len(ids)>>16)
		id[0] = byte(seed)
		return id
	}
	var order []ferry.ID // of every insert
	check := func(step int, id ferry.ID) {
		t.Helper()
		got, ok := w.lookup(id, now)
		want, inserted := last[id]
		live := inserted && want.hit.time >= now-int64(window)
		seenExpired := false
		if i := sort.Search(len(cuts), func(i int) bool { return cuts[i].lookup >= want.lookups }); inserted && i < len(cuts) {
			seenExpired = want.hit.time < cuts[i].at
		}
		c := cut{lookups, now - int64(window)}
		for len(cuts) > 0 && cuts[len(cuts)-1].at <= c.at {
			cuts = cuts[:len(cuts)-1]
		}
		cuts = append(cuts, c)
		lookups++
		switch {
		case ok && !live:
			t.Fatalf("seed %d step %d: lookup of %s found %+v; its last insert %+v (inserted %v) is not within the window %v of now %d", seed, step, id, got, want, inserted, window, now)
		case ok && got != want.hit:
			t.Fatalf("seed %d step %d: lookup of %s found %+v, want its last insert %+v", seed, step, id, got, want.hit)
		case !ok && live && !seenExpired && calls-want.call < maxIDs:
			t.Fatalf("seed %d step %d: lookup of %s found nothing; it was inserted %d inserts ago (window of %d IDs) at %d, now %d", seed, step, id, calls-want.call, maxIDs, want.hit.time, now)
		}
	}
	steps := 2000
	if maxIDs >= 1000 {
		steps = 20000
	}
	for step := range steps {
		switch r := rng.IntN(100); {
		case r < 10: // the clock steps, mostly forward, sometimes back
			span := int(window / time.Millisecond)
			if rng.IntN(2) == 0 {
				span /= 20 // small steps: entries near the edge of the window
			}
			now += int64(rng.IntN(span*2+1)-span/4) * int64(time.Millisecond)
		case r < 55: // an insert: a new ID or a repeat of a recent one
			var id ferry.ID
			if len(order) > 0 && rng.IntN(5) == 0 {
				id = order[len(order)-1-rng.IntN(min(len(order), 3*maxIDs))]
			} else {
				id = newID()
				ids = append(ids, id)
			}
			hit := dedupHit{partition: int32(rng.IntN(8)), offset: uint64(step)}
			w.insert(id, hit, now)
			hit.time = now
			calls++
			last[id] = insert{call: calls, lookups: lookups, hit: hit}
			order = append(order, id)
		default: // a lookup of an ID inserted or not
			if len(order) > 0 && rng.IntN(4) != 0 {
				check(step, order[len(order)-1-rng.IntN(min(len(order), 3*maxIDs))])
			} else {
				check(step, ferry.NewID())
			}
		}
		if maxIDs <= 64 { // every one of the last max inserts, each step
			for _, id := range order[max(0, len(order)-maxIDs):] {
				check(step, id)
			}
		}
		if n := w.cur.n + w.prev.n; n > 2*maxIDs {
			t.Fatalf("seed %d step %d: the window holds %d IDs, more than 2×%d", seed, step, n, maxIDs)
		}
	}
}

// A table holds at most seven eighths of its slots, so a probe for an
// absent ID always ends, however small the window.
func TestDedupTableAlwaysHasAFreeSlot(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 767, 768, 769, 1000, 100_000, 10_000_000} {
		if s := dedupSlotsFor(n); s <= n || n > s*7/8+1 || s&(s-1) != 0 {
			t.Errorf("dedupSlotsFor(%d) = %d: want a power of two above 8n/7", n, s)
		}
	}
}

// BenchmarkDedupWindow is the writer's per-message work: look a new ID
// up and insert it, with the default window of 100k IDs.
func BenchmarkDedupWindow(b *testing.B) {
	w := newDedupWindow(2*time.Minute, 100_000)
	ids := make([]ferry.ID, 1<<16)
	ferry.NewIDs(ids)
	now := time.Now().UnixNano()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id := ids[i&(len(ids)-1)]
		id[15] ^= byte(i >> 16) // new IDs beyond the first pass
		id[14] ^= byte(i >> 24)
		if _, dup := w.lookup(id, now); !dup {
			w.insert(id, dedupHit{offset: uint64(i)}, now)
		}
	}
}
