package admin

import (
	"math/rand/v2"
	"testing"

	"github.com/ferrymq/ferry"
)

func TestReplayCopyIDIsDeterministic(t *testing.T) {
	a := ReplayCopyID("orders", 1, 7, "audit")
	if a != ReplayCopyID("orders", 1, 7, "audit") {
		t.Fatal("not deterministic")
	}
	for _, b := range []ferry.ID{ReplayCopyID("orders", 1, 8, "audit"), ReplayCopyID("orders", 2, 7, "audit"), ReplayCopyID("orders", 1, 7, "audit2"), ReplayCopyID("orders2", 1, 7, "audit")} {
		if a == b {
			t.Fatalf("two copies share ID %s", a)
		}
	}
	if p, off, ok := ParseReplayOf("orders/1/7", "orders"); !ok || p != 1 || off != 7 {
		t.Fatalf("ParseReplayOf: %v %v %v", p, off, ok)
	}
	for _, v := range []string{"orders-x/1/7", "orders/1", "orders/a/7", "other/1/7", ""} {
		if _, _, ok := ParseReplayOf(v, "orders"); ok {
			t.Errorf("ParseReplayOf(%q) accepted", v)
		}
	}
}

// offsetSet against a map, for random adds in every order (runs, repeats,
// gaps filled later): the same members, spans sorted, disjoint and not
// touching.
func TestOffsetSetIsTheSetOfItsAdds(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 0))
		s, want := offsetSet{}, map[uint64]bool{}
		for range 300 {
			off := uint64(rng.IntN(120))
			if rng.IntN(3) == 0 { // a run, as a replay writes
				for k := range uint64(rng.IntN(8)) {
					s.add(1, off+k)
					want[off+k] = true
				}
				continue
			}
			s.add(1, off)
			want[off] = true
		}
		for off := range uint64(140) {
			if s.has(1, off) != want[off] {
				t.Fatalf("seed %d: has(%d) = %v, want %v (spans %v)", seed, off, s.has(1, off), want[off], s[1])
			}
		}
		for i, sp := range s[1] {
			if sp.from >= sp.to || i > 0 && s[1][i-1].to >= sp.from {
				t.Fatalf("seed %d: spans not sorted, disjoint and apart: %v", seed, s[1])
			}
		}
		if s.has(0, 5) {
			t.Fatalf("seed %d: another partition has members", seed)
		}
	}
}
