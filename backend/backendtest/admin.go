package backendtest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// eventually polls cond until it holds, failing the test with what it
// last said once the deadline passed: for what a backend applies in the
// background (a Kafka member joins on its client's first poll, a member
// that left is removed by the coordinator).
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last: %s", what, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testAdmin checks backend.Admin against a model of what must hold after
// each operation: a created topic is listed with the config it was created
// with, and EnsureTopic leaves that config alone; creating it again fails
// with ErrTopicExists; deleting it removes it (ErrTopicNotFound for a
// second delete, for Partitions, and a topic of the same name created
// anew has its new partition count); a group appears in Groups with
// exactly the offsets its session committed; Members names a session's
// member while it runs and not after it left; SetCommitted moves the
// offsets Committed and Groups read.
func testAdmin(t *testing.T, h Harness) {
	b := h.New(t)
	adm, ok := b.(backend.Admin)
	if !ok {
		t.Skip("the backend does not implement backend.Admin")
	}
	ctx := ctxFor(t)
	list := func() map[string]backend.TopicInfo {
		t.Helper()
		infos, err := adm.Topics(ctx)
		if err != nil {
			t.Fatalf("Topics: %v", err)
		}
		if !sort.SliceIsSorted(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name }) {
			t.Fatalf("Topics not sorted by name: %+v", infos)
		}
		out := map[string]backend.TopicInfo{}
		for _, ti := range infos {
			if _, dup := out[ti.Name]; dup {
				t.Fatalf("Topics lists %s twice", ti.Name)
			}
			if ti.Bytes < -1 {
				t.Fatalf("topic %s: Bytes %d", ti.Name, ti.Bytes)
			}
			out[ti.Name] = ti
		}
		return out
	}
	sameConfig := func(got, want backend.TopicInfo) bool {
		return got.Name == want.Name && got.Partitions == want.Partitions && got.RetentionAge == want.RetentionAge &&
			got.RetentionBytes == want.RetentionBytes && got.Compact == want.Compact
	}

	groupOffsets := func(g string) ([]backend.Offset, bool) {
		t.Helper()
		gs, err := adm.Groups(ctx)
		if err != nil {
			t.Fatalf("Groups: %v", err)
		}
		offs, ok := gs[g]
		return offs, ok
	}

	// Create: listed with its config.
	const topic = "admin.events"
	want := backend.TopicInfo{Name: topic, Partitions: 3, RetentionAge: 36 * time.Hour, RetentionBytes: 64 << 20}
	if _, ok := list()[topic]; ok {
		t.Fatalf("%s listed before it was created", topic)
	}
	if err := adm.CreateTopic(ctx, want); err != nil {
		t.Fatalf("CreateTopic(%+v): %v", want, err)
	}
	got, ok := list()[topic]
	if !ok || !sameConfig(got, want) {
		t.Fatalf("after CreateTopic(%+v), Topics lists %+v (listed: %v)", want, got, ok)
	}
	if n, err := b.Partitions(ctx, topic); err != nil || n != 3 {
		t.Fatalf("Partitions of the created topic: %d, %v", n, err)
	}
	if err := b.Publish(ctx, msg(topic, "k1", 0), msg(topic, "k2", 1), msg(topic, "k3", 2)); err != nil {
		t.Fatal(err)
	}
	if got := list()[topic]; got.Bytes == 0 {
		t.Fatalf("topic with 3 messages stores 0 bytes, want its size or -1 (unknown): %+v", got)
	}

	// Create again: refused, the topic unchanged; EnsureTopic leaves it
	// as it is.
	if err := adm.CreateTopic(ctx, backend.TopicInfo{Name: topic, Partitions: 1}); !errors.Is(err, ferry.ErrTopicExists) {
		t.Fatalf("CreateTopic of an existing topic: %v, want ErrTopicExists", err)
	}
	ensure(t, b, topic, 1)
	if got := list()[topic]; !sameConfig(got, want) {
		t.Fatalf("after a second CreateTopic and EnsureTopic, Topics lists %+v, want the config of %+v", got, want)
	}

	// Compaction: made as asked, or refused where the backend has none.
	compact := backend.TopicInfo{Name: "admin.compact", Partitions: 1, Compact: true}
	switch err := adm.CreateTopic(ctx, compact); {
	case err == nil:
		if got, ok := list()[compact.Name]; !ok || !sameConfig(got, compact) {
			t.Fatalf("after CreateTopic(%+v), Topics lists %+v (listed: %v)", compact, got, ok)
		}
	case errors.Is(err, ferry.ErrInvalidArgument):
		if _, ok := list()[compact.Name]; ok {
			t.Fatalf("a refused CreateTopic (%v) left %s listed", err, compact.Name)
		}
	default:
		t.Fatalf("CreateTopic(%+v): %v, want it made or ErrInvalidArgument", compact, err)
	}

	// Delete: gone with its groups' offsets, and a topic of the same name
	// is a new one.
	doomed := backend.Offset{TopicPartition: backend.TopicPartition{Topic: topic, Partition: 1}, Offset: 2}
	if err := adm.SetCommitted(ctx, "admin-doomed", doomed); err != nil {
		t.Fatalf("SetCommitted: %v", err)
	}
	if err := adm.DeleteTopic(ctx, topic); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	if got, ok := list()[topic]; ok {
		t.Fatalf("after DeleteTopic, Topics lists %+v", got)
	}
	if _, err := b.Partitions(ctx, topic); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("Partitions of a deleted topic: %v, want ErrTopicNotFound", err)
	}
	if err := adm.DeleteTopic(ctx, topic); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("second DeleteTopic: %v, want ErrTopicNotFound", err)
	}
	again := backend.TopicInfo{Name: topic, Partitions: 2}
	if err := adm.CreateTopic(ctx, again); err != nil {
		t.Fatalf("CreateTopic after the delete: %v", err)
	}
	if got, ok := list()[topic]; !ok || !sameConfig(got, again) {
		t.Fatalf("recreated as %+v, Topics lists %+v (listed: %v)", again, got, ok)
	}
	if n, err := b.Partitions(ctx, topic); err != nil || n != 2 {
		t.Fatalf("Partitions of the topic recreated with 2: %d, %v", n, err)
	}
	for p := range 2 {
		if start, end, err := b.Bounds(ctx, backend.TopicPartition{Topic: topic, Partition: int32(p)}); err != nil || start != 0 || end != 0 {
			t.Fatalf("partition %d of the recreated topic: bounds %d-%d, %v, want empty", p, start, end, err)
		}
	}
	if off, ok, err := b.Committed(ctx, "admin-doomed", doomed.TopicPartition); err != nil || ok {
		t.Fatalf("the recreated topic has the deleted one's committed offset: %d %v %v", off, ok, err)
	}
	if offs, _ := groupOffsets("admin-doomed"); len(offs) != 0 {
		t.Fatalf("Groups lists the offsets of a deleted topic: %v", offs)
	}
	first := &ferry.Message{Topic: topic, Partition: 1, PinPartition: true, Payload: []byte("anew")}
	if err := b.Publish(ctx, first); err != nil || first.Offset != 0 {
		t.Fatalf("publish to the recreated topic: offset %d, %v, want 0", first.Offset, err)
	}
	if got := readAll(t, b, backend.TopicPartition{Topic: topic, Partition: 1}, 0); len(got) != 1 || string(got[0].Payload) != "anew" {
		t.Fatalf("the recreated topic holds %v, want only the message published to it", got)
	}

	// Groups and Members, from a session that commits.
	const in, group, member = "admin.in", "admin-group", "admin-member"
	ensure(t, b, in, 3)
	members := func() []string {
		t.Helper()
		ms, err := adm.Members(ctx, group)
		if err != nil {
			t.Fatalf("Members: %v", err)
		}
		return ms
	}
	if offs, ok := groupOffsets(group); ok {
		t.Fatalf("Groups lists %s before it committed: %v", group, offs)
	}
	if ms := members(); len(ms) != 0 {
		t.Fatalf("Members of a group nobody joined: %v", ms)
	}
	s, err := b.Join(ctx, group, member, []string{in})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Leave()
	waitFor(t, s, 3)
	eventually(t, "Members to list the session's member", func() (bool, string) {
		ms := members()
		return slices.Equal(ms, []string{member}), fmt.Sprint(ms)
	})
	committed := []backend.Offset{
		{TopicPartition: backend.TopicPartition{Topic: in, Partition: 0}, Offset: 4},
		{TopicPartition: backend.TopicPartition{Topic: in, Partition: 2}, Offset: 9},
	}
	for _, o := range committed {
		if err := b.Commit(ctx, s, o); err != nil {
			t.Fatalf("Commit %v: %v", o, err)
		}
	}
	if offs, _ := groupOffsets(group); !slices.Equal(offs, committed) {
		t.Fatalf("Groups[%s] = %v, want the committed %v", group, offs, committed)
	}
	s.Leave()
	eventually(t, "Members to be empty once the session left", func() (bool, string) {
		ms := members()
		return len(ms) == 0, fmt.Sprint(ms)
	})
	if offs, _ := groupOffsets(group); !slices.Equal(offs, committed) {
		t.Fatalf("after the session left, Groups[%s] = %v, want %v", group, offs, committed)
	}

	// SetCommitted: what Committed and Groups read next.
	reset := []backend.Offset{
		{TopicPartition: backend.TopicPartition{Topic: in, Partition: 0}, Offset: 1},
		{TopicPartition: backend.TopicPartition{Topic: in, Partition: 1}, Offset: 0},
		{TopicPartition: backend.TopicPartition{Topic: in, Partition: 2}, Offset: 12},
	}
	if err := adm.SetCommitted(ctx, group, reset...); err != nil {
		t.Fatalf("SetCommitted: %v", err)
	}
	for _, o := range reset {
		off, ok, err := b.Committed(ctx, group, o.TopicPartition)
		if err != nil || !ok || off != o.Offset {
			t.Fatalf("Committed %v after SetCommitted: %d %v %v", o.TopicPartition, off, ok, err)
		}
	}
	if offs, _ := groupOffsets(group); !slices.Equal(offs, reset) {
		t.Fatalf("after SetCommitted, Groups[%s] = %v, want %v", group, offs, reset)
	}
	// A group that only ever had offsets set is a group.
	fresh := []backend.Offset{{TopicPartition: backend.TopicPartition{Topic: in, Partition: 1}, Offset: 7}}
	if err := adm.SetCommitted(ctx, "admin-fresh", fresh...); err != nil {
		t.Fatalf("SetCommitted of a new group: %v", err)
	}
	if offs, _ := groupOffsets("admin-fresh"); !slices.Equal(offs, fresh) {
		t.Fatalf("Groups[admin-fresh] = %v, want %v", offs, fresh)
	}
	if ms := members(); len(ms) != 0 {
		t.Fatalf("Members after a reset: %v", ms)
	}
	missing := backend.Offset{TopicPartition: backend.TopicPartition{Topic: "admin.missing", Partition: 0}, Offset: 1}
	if err := adm.SetCommitted(ctx, group, missing); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("SetCommitted on a missing topic: %v, want ErrTopicNotFound", err)
	}

	// The group's members again, from a second session: it resumes where
	// the reset put it.
	s2, err := b.Join(context.Background(), group, member+"-2", []string{in})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Leave()
	waitFor(t, s2, 3)
	eventually(t, "Members to list the second session's member", func() (bool, string) {
		ms := members()
		return slices.Equal(ms, []string{member + "-2"}), fmt.Sprint(ms)
	})
	if off, ok, err := b.Committed(ctx, group, reset[2].TopicPartition); err != nil || !ok || off != reset[2].Offset {
		t.Fatalf("Committed %v with a new member: %d %v %v", reset[2].TopicPartition, off, ok, err)
	}
}

// testAdminAlterTopic checks backend.TopicAlterer where the backend has
// it: AlterTopic changes a topic's retention, which Topics reports, and
// nothing else (the partitions, compaction and duplicate window as
// created, the messages still there, publish and fetch still working);
// 0 means keep forever and unbounded; a retention shorter than the
// duplicate window is taken (a backend may shorten the window to it, and
// need not lengthen it again with a later, longer retention); a missing
// topic is ErrTopicNotFound.
func testAdminAlterTopic(t *testing.T, h Harness) {
	b := h.New(t)
	adm, ok := b.(backend.Admin)
	if !ok {
		t.Skip("the backend does not implement backend.Admin")
	}
	alt, ok := b.(backend.TopicAlterer)
	if !ok {
		t.Skip("the backend does not implement backend.TopicAlterer")
	}
	ctx := ctxFor(t)
	const topic = "alter.events"
	info := func() backend.TopicInfo {
		t.Helper()
		infos, err := adm.Topics(ctx)
		if err != nil {
			t.Fatalf("Topics: %v", err)
		}
		for _, ti := range infos {
			if ti.Name == topic {
				return ti
			}
		}
		t.Fatalf("Topics does not list %s: %+v", topic, infos)
		return backend.TopicInfo{}
	}
	created := backend.TopicInfo{Name: topic, Partitions: 2, RetentionAge: 36 * time.Hour, RetentionBytes: 64 << 20, DedupWindow: 10 * time.Minute}
	err := adm.CreateTopic(ctx, created)
	if errors.Is(err, ferry.ErrInvalidArgument) {
		// A backend without a dedup window (Kafka) refuses one.
		created.DedupWindow = 0
		err = adm.CreateTopic(ctx, created)
	}
	if err != nil {
		t.Fatalf("CreateTopic(%+v): %v", created, err)
	}
	dedup := info().DedupWindow // as the backend reports it (0 if it does not)
	tp := backend.TopicPartition{Topic: topic, Partition: 1}
	published := 0
	publish := func() {
		t.Helper()
		m := &ferry.Message{ID: ferry.NewID(), Topic: topic, Partition: 1, PinPartition: true, Payload: []byte(fmt.Sprint("m", published))}
		if err := b.Publish(ctx, m); err != nil {
			t.Fatalf("publish after AlterTopic: %v", err)
		}
		published++
		got := readAll(t, b, tp, 0)
		if len(got) != published {
			t.Fatalf("partition 1 holds %d messages, want the %d published", len(got), published)
		}
		for i, m := range got {
			if want := fmt.Sprint("m", i); string(m.Payload) != want {
				t.Fatalf("message %d of partition 1: %q, want %q", i, m.Payload, want)
			}
		}
	}
	publish()

	steps := []struct {
		what  string
		alter backend.TopicInfo
	}{
		{"longer retention", backend.TopicInfo{Name: topic, Partitions: 2, RetentionAge: 72 * time.Hour, RetentionBytes: 128 << 20}},
		// The other fields are ignored: partitions, compaction and
		// duplicate window stay as created.
		{"other fields ignored", backend.TopicInfo{Name: topic, Partitions: 7, Compact: true, DedupWindow: time.Hour, RetentionAge: 48 * time.Hour, RetentionBytes: 32 << 20}},
		{"keep forever, unbounded", backend.TopicInfo{Name: topic, RetentionAge: 0, RetentionBytes: 0}},
		{"retention shorter than the dedup window", backend.TopicInfo{Name: topic, RetentionAge: 5 * time.Minute, RetentionBytes: 1 << 30}},
		{"retention longer again", backend.TopicInfo{Name: topic, RetentionAge: time.Hour}},
	}
	shortened := dedup
	for _, st := range steps {
		if err := alt.AlterTopic(ctx, st.alter); err != nil {
			t.Fatalf("%s: AlterTopic(%+v): %v", st.what, st.alter, err)
		}
		got := info()
		if got.RetentionAge != st.alter.RetentionAge || got.RetentionBytes != st.alter.RetentionBytes {
			t.Fatalf("%s: after AlterTopic(%+v), Topics lists retention %v and %d bytes", st.what, st.alter, got.RetentionAge, got.RetentionBytes)
		}
		if got.Partitions != created.Partitions || got.Compact {
			t.Fatalf("%s: after AlterTopic(%+v), Topics lists %+v, want %d partitions, not compacted", st.what, st.alter, got, created.Partitions)
		}
		if n, err := b.Partitions(ctx, topic); err != nil || n != created.Partitions {
			t.Fatalf("%s: Partitions after AlterTopic: %d, %v", st.what, n, err)
		}
		// The window as created, or shortened to the shortest retention
		// so far that is shorter.
		if a := st.alter.RetentionAge; a > 0 && a < dedup && got.DedupWindow == a {
			shortened = a
		}
		if got.DedupWindow != dedup && got.DedupWindow != shortened {
			t.Fatalf("%s: after AlterTopic(%+v), dedup window %v, want %v as created (or shortened to a shorter retention)", st.what, st.alter, got.DedupWindow, dedup)
		}
		publish()
	}

	missing := backend.TopicInfo{Name: "alter.missing", RetentionAge: time.Hour}
	if err := alt.AlterTopic(ctx, missing); !errors.Is(err, ferry.ErrTopicNotFound) {
		t.Fatalf("AlterTopic of a missing topic: %v, want ErrTopicNotFound", err)
	}
}

// testAdminDeleteGroup checks backend.GroupDeleter where the backend has
// it: DeleteGroup removes every committed offset of the group (Committed
// finds none, Groups no longer lists it) and leaves other groups' alone,
// those of a group whose name starts with the deleted one's included; a
// group without offsets is no error; the deleted group can commit anew.
func testAdminDeleteGroup(t *testing.T, h Harness) {
	b := h.New(t)
	adm, ok := b.(backend.Admin)
	if !ok {
		t.Skip("the backend does not implement backend.Admin")
	}
	del, ok := b.(backend.GroupDeleter)
	if !ok {
		t.Skip("the backend does not implement backend.GroupDeleter")
	}
	ctx := ctxFor(t)
	const in, other = "delgroup.in", "delgroup.other"
	ensure(t, b, in, 3)
	ensure(t, b, other, 1)
	tp := func(topic string, p int32) backend.TopicPartition {
		return backend.TopicPartition{Topic: topic, Partition: p}
	}
	const doomed = "dg"
	offsets := map[string][]backend.Offset{
		doomed: {{TopicPartition: tp(in, 0), Offset: 3}, {TopicPartition: tp(in, 2), Offset: 5}, {TopicPartition: tp(other, 0), Offset: 1}},
		"dg-2": {{TopicPartition: tp(in, 0), Offset: 7}, {TopicPartition: tp(in, 2), Offset: 8}},
		"dg.x": {{TopicPartition: tp(other, 0), Offset: 2}},
		"kept": {{TopicPartition: tp(in, 1), Offset: 4}},
	}
	for g, offs := range offsets {
		if err := adm.SetCommitted(ctx, g, offs...); err != nil {
			t.Fatalf("SetCommitted(%s, %v): %v", g, offs, err)
		}
	}
	// One offset committed by a session, as a consumer leaves it.
	s, err := b.Join(ctx, doomed, "dg-member", []string{in})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, 3)
	if err := b.Commit(ctx, s, backend.Offset{TopicPartition: tp(in, 1), Offset: 6}); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	s.Leave()
	if off, ok, err := b.Committed(ctx, doomed, tp(in, 1)); err != nil || !ok || off != 6 {
		t.Fatalf("Committed after the session's commit: %d %v %v", off, ok, err)
	}
	eventually(t, "Members to be empty once the session left", func() (bool, string) {
		ms, err := adm.Members(ctx, doomed)
		return err == nil && len(ms) == 0, fmt.Sprint(ms, err)
	})

	if err := del.DeleteGroup(ctx, doomed); err != nil {
		t.Fatalf("DeleteGroup(%s): %v", doomed, err)
	}
	for _, tp := range []backend.TopicPartition{tp(in, 0), tp(in, 1), tp(in, 2), tp(other, 0)} {
		if off, ok, err := b.Committed(ctx, doomed, tp); err != nil || ok {
			t.Fatalf("Committed %v of the deleted group: %d %v %v, want none", tp, off, ok, err)
		}
	}
	groups, err := adm.Groups(ctx)
	if err != nil {
		t.Fatalf("Groups: %v", err)
	}
	if offs, ok := groups[doomed]; ok {
		t.Fatalf("Groups lists the deleted group %s: %v", doomed, offs)
	}
	for g, want := range offsets {
		if g == doomed {
			continue
		}
		if got := groups[g]; !slices.Equal(got, want) {
			t.Fatalf("after DeleteGroup(%s), Groups[%s] = %v, want %v", doomed, g, got, want)
		}
		for _, o := range want {
			if off, ok, err := b.Committed(ctx, g, o.TopicPartition); err != nil || !ok || off != o.Offset {
				t.Fatalf("after DeleteGroup(%s), Committed %v of %s: %d %v %v, want %d", doomed, o.TopicPartition, g, off, ok, err, o.Offset)
			}
		}
	}

	// Again, and a group that never committed: no error.
	if err := del.DeleteGroup(ctx, doomed); err != nil {
		t.Fatalf("second DeleteGroup(%s): %v", doomed, err)
	}
	if err := del.DeleteGroup(ctx, "dg-never"); err != nil {
		t.Fatalf("DeleteGroup of a group without offsets: %v", err)
	}

	// The deleted group commits anew.
	anew := []backend.Offset{{TopicPartition: tp(in, 2), Offset: 1}}
	if err := adm.SetCommitted(ctx, doomed, anew...); err != nil {
		t.Fatalf("SetCommitted after DeleteGroup: %v", err)
	}
	if off, ok, err := b.Committed(ctx, doomed, anew[0].TopicPartition); err != nil || !ok || off != 1 {
		t.Fatalf("Committed after a new SetCommitted: %d %v %v", off, ok, err)
	}
	if offs, _ := adm.Groups(ctx); !slices.Equal(offs[doomed], anew) {
		t.Fatalf("Groups[%s] after a new SetCommitted: %v, want %v", doomed, offs[doomed], anew)
	}
}
