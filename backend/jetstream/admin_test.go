package jetstream_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/jetstream"
)

// A member killed without leaving keeps its heartbeat key until another
// member expires it; Members lists it while its key is fresh and leaves
// it out once the key went a session timeout unchanged (by the server's
// clock), although the key is still there.
func TestMembersLeaveOutSilentHeartbeatKeys(t *testing.T) {
	ns := startServer(t)
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := randomPrefix()
	const session = time.Second
	b, err := jetstream.New(ctx, nc, jetstream.WithPrefix(prefix), jetstream.WithSessionTimeout(session))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, prefix+"_groups")
	if err != nil {
		t.Fatal(err)
	}
	// What a member's heartbeat leaves behind (see group.go).
	if _, err := kv.Put(ctx, "g.m.dead", []byte(`{"partitions":[],"session":"x","beat":1}`)); err != nil {
		t.Fatal(err)
	}
	written := time.Now()
	var adm backend.Admin = b
	ms, err := adm.Members(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(written) < session && !slices.Equal(ms, []string{"dead"}) {
		t.Fatalf("Members with a fresh heartbeat key: %v, want [dead]", ms)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms, err := adm.Members(ctx, "g")
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Members still %v 30s after the key was last written (session timeout %v)", ms, session)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if since := time.Since(written); since < session-100*time.Millisecond {
		t.Fatalf("Members left the key out %v after it was written, before the session timeout %v", since, session)
	}
	if _, err := kv.Get(ctx, "g.m.dead"); err != nil {
		t.Fatalf("the key itself: %v, want it still there (Members only reads)", err)
	}
}
