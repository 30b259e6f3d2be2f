package backend

import (
	"testing"
	"time"

	"github.com/ferrymq/ferry"
)

func TestTakeDueStopsAtTheFirstMessageNotDue(t *testing.T) {
	now := time.Now()
	held := []*ferry.Message{{Offset: 0}, {Offset: 1, NotBefore: now.Add(-time.Second)}, {Offset: 2, NotBefore: now.Add(time.Hour)}, {Offset: 3}}
	if out := TakeDue(&held, 1, now); len(out) != 1 || out[0].Offset != 0 || len(held) != 3 {
		t.Fatalf("max 1: took %d, %d left", len(out), len(held))
	}
	if out := TakeDue(&held, 10, now); len(out) != 1 || out[0].Offset != 1 || len(held) != 2 {
		t.Fatalf("took %d, %d left; want offset 1 only: offset 3 waits behind the delayed offset 2", len(out), len(held))
	}
	if out := TakeDue(&held, 10, now); out != nil || len(held) != 2 {
		t.Fatalf("nothing is due, yet %d taken", len(out))
	}
	if out := TakeDue(&held, 10, now.Add(2*time.Hour)); len(out) != 2 || len(held) != 0 {
		t.Fatalf("later: took %d, %d left", len(out), len(held))
	}
}
