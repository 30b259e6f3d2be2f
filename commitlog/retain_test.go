package commitlog_test

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/memlog"
)

// Once an append returned, the log holds nothing of the caller's
// messages: the writer's reused scratch space used to keep the last
// group's requests and messages, and through them whatever buffer their
// payloads were cut from (a whole produce request, for ferry serve).
func TestAppendKeepsNoReferenceToTheCallersMessages(t *testing.T) {
	l := memlog.Open(t)
	ctx := context.Background()
	if err := l.CreateTopic(ctx, "t", commitlog.TopicConfig{}); err != nil {
		t.Fatal(err)
	}
	var freed atomic.Bool
	func() {
		buf := make([]byte, 1<<20)
		runtime.AddCleanup(&buf[0], func(*atomic.Bool) { freed.Store(true) }, &freed)
		if err := l.Append(ctx, &ferry.Message{Topic: "t", Payload: buf[:100]}); err != nil {
			t.Fatal(err)
		}
	}()
	// The writer goes back to waiting for the next request, where
	// nothing of the last group may be left.
	for i := 0; i < 200 && !freed.Load(); i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if !freed.Load() {
		t.Fatal("the buffer a message's payload was cut from is still reachable after its append returned")
	}
}
