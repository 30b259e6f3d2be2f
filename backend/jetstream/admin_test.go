package jetstream_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry"
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

// AlterTopic changes MaxAge and MaxBytes of every partition's stream,
// not only the one Topics reads, shortens the duplicate window to a
// shorter retention and leaves the rest of each stream's config as it
// was; a partition stream gone is ErrTopicNotFound.
func TestAlterTopicChangesEveryPartitionStream(t *testing.T) {
	ns := startServer(t)
	nc, err := nats.Connect(ns.url())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := randomPrefix()
	b, err := jetstream.New(ctx, nc, jetstream.WithPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	const topic, parts = "alter", 4
	if err := b.CreateTopic(ctx, backend.TopicInfo{Name: topic, Partitions: parts, RetentionAge: time.Hour, RetentionBytes: 1 << 20, DedupWindow: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	configs := func() []natsjs.StreamConfig {
		t.Helper()
		var out []natsjs.StreamConfig
		for p := range parts {
			info, err := js.Stream(ctx, fmt.Sprintf("%s_%s_%d", prefix, topic, p))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, info.CachedInfo().Config)
		}
		return out
	}
	before := configs()
	steps := []struct {
		age         time.Duration
		bytes       int64
		wantMaxByte int64
		wantDup     time.Duration
	}{
		{5 * time.Minute, 2 << 20, 2 << 20, 5 * time.Minute}, // the window shortened to the retention
		{0, 0, -1, 5 * time.Minute},                          // forever, unbounded; the window stays as it is
	}
	for _, st := range steps {
		if err := b.AlterTopic(ctx, backend.TopicInfo{Name: topic, RetentionAge: st.age, RetentionBytes: st.bytes}); err != nil {
			t.Fatalf("AlterTopic(%v, %d): %v", st.age, st.bytes, err)
		}
		for p, c := range configs() {
			if c.MaxAge != st.age || c.MaxBytes != st.wantMaxByte || c.Duplicates != st.wantDup {
				t.Fatalf("after AlterTopic(%v, %d), partition %d's stream has MaxAge %v, MaxBytes %d, Duplicates %v; want %v, %d, %v",
					st.age, st.bytes, p, c.MaxAge, c.MaxBytes, c.Duplicates, st.age, st.wantMaxByte, st.wantDup)
			}
			want := before[p]
			want.MaxAge, want.MaxBytes, want.Duplicates = c.MaxAge, c.MaxBytes, c.Duplicates
			if !reflect.DeepEqual(c, want) {
				t.Fatalf("after AlterTopic, partition %d's stream config %+v, want the rest as created: %+v", p, c, want)
			}
		}
	}
	if err := js.DeleteStream(ctx, fmt.Sprintf("%s_%s_%d", prefix, topic, parts-1)); err != nil {
		t.Fatal(err)
	}
	if err := b.AlterTopic(ctx, backend.TopicInfo{Name: topic, RetentionAge: time.Hour}); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("AlterTopic with a partition stream gone: %v, want ErrTopicNotFound", err)
	}
}
