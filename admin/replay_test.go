package admin

import (
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
