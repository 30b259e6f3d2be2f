package commitlog

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
)

// The dedup window finds every one of the last max IDs (its filters never
// hide an ID its maps hold), through filter activation and many
// generations, with random and with sequential
// (non-random) IDs; and they do answer "absent" for most new IDs.
func TestDedupFilterNeverHidesAnID(t *testing.T) {
	for _, name := range []string{"uuidv7", "sequential"} {
		t.Run(name, func(t *testing.T) {
			const max = 10_000
			w := newDedupWindow(time.Hour, max)
			rng := rand.New(rand.NewPCG(1, 2))
			var ids []ferry.ID
			now := time.Now().UnixNano()
			for i := range 60_000 {
				id := ferry.NewID()
				if name == "sequential" {
					id = ferry.ID{}
					id[15], id[14], id[13] = byte(i), byte(i>>8), byte(i>>16)
				}
				ids = append(ids, id)
				if _, dup := w.lookup(id, now); dup {
					t.Fatalf("new ID %d reported as a duplicate", i)
				}
				w.insert(id, dedupHit{offset: uint64(i)}, now)
				if i%997 == 0 {
					for range 200 {
						j := i - rng.IntN(min(i+1, max))
						if h, ok := w.lookup(ids[j], now); !ok || h.offset != uint64(j) {
							t.Fatalf("after %d inserts, ID %d (within the last %d) not found", i+1, j, max)
						}
					}
				}
			}
			if w.cur.filter == nil || w.prev.filter == nil {
				t.Fatal("the filters never came into use")
			}
			negatives := 0
			for range 10_000 {
				if h := idHash(ferry.NewID()); !w.cur.filter.mayContain(h) && !w.prev.filter.mayContain(h) {
					negatives++
				}
			}
			if negatives < 9_000 {
				t.Fatalf("the filters answered absent for only %d of 10000 new IDs", negatives)
			}
		})
	}
}
