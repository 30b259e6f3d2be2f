package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Topic configs change through IncrementalAlterConfigs and AlterConfigs,
// durably, as the log keeps them: retention changes; compaction and
// unknown configs are refused as INVALID_CONFIG naming why; a validate-only
// request changes nothing.
func TestAlterConfigs(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 2)
	adm := kadm.NewClient(tb.client())
	str := func(s string) *string { return &s }
	alter := func(validate bool, cs ...kadm.AlterConfig) error {
		t.Helper()
		f := adm.AlterTopicConfigs
		if validate {
			f = adm.ValidateAlterTopicConfigs
		}
		rs, err := f(ctx, cs, "t")
		if err != nil {
			t.Fatal(err)
		}
		r, _ := rs.On("t", nil)
		if r.Err != nil {
			return errors.New(r.Err.Error() + ": " + r.ErrMessage)
		}
		return nil
	}
	retention := func() (time.Duration, int64) {
		info, err := tb.log.Topic("t")
		if err != nil {
			t.Fatal(err)
		}
		return info.Config.RetentionAge, info.Config.RetentionBytes
	}
	if err := alter(false, kadm.AlterConfig{Name: "retention.ms", Value: str("3600000")}, kadm.AlterConfig{Name: "retention.bytes", Value: str("1048576")}); err != nil {
		t.Fatalf("set retention: %v", err)
	}
	if age, bytes := retention(); age != time.Hour || bytes != 1<<20 {
		t.Fatalf("after the alter: retention %v and %d bytes, want 1h and 1 MiB", age, bytes)
	}
	rc, err := adm.DescribeTopicConfigs(ctx, "t")
	if err != nil {
		t.Fatal(err)
	}
	if c, err := rc.On("t", nil); err != nil || !strings.Contains(describe(c), "retention.ms=3600000") {
		t.Fatalf("described: %v %v", describe(c), err)
	}
	if err := alter(true, kadm.AlterConfig{Name: "retention.ms", Value: str("60000")}); err != nil {
		t.Fatalf("validate only: %v", err)
	}
	if age, _ := retention(); age != time.Hour {
		t.Fatalf("a validate-only alter changed retention to %v", age)
	}
	if err := alter(false, kadm.AlterConfig{Op: kadm.DeleteConfig, Name: "retention.ms"}); err != nil {
		t.Fatalf("delete retention.ms: %v", err)
	}
	if age, bytes := retention(); age != 0 || bytes != 1<<20 {
		t.Fatalf("after deleting retention.ms: %v and %d bytes, want forever and 1 MiB", age, bytes)
	}
	for _, c := range []struct {
		cfg  kadm.AlterConfig
		says string
	}{
		{kadm.AlterConfig{Name: "cleanup.policy", Value: str("compact")}, "fixed at creation"},
		{kadm.AlterConfig{Name: "flush.messages", Value: str("1")}, "not supported"},
		{kadm.AlterConfig{Name: "retention.ms", Value: str("soon")}, "retention.ms"},
		{kadm.AlterConfig{Op: kadm.AppendConfig, Name: "cleanup.policy", Value: str("compact")}, "only SET and DELETE"},
	} {
		if err := alter(false, c.cfg); err == nil || !strings.Contains(err.Error(), kerr.InvalidConfig.Message) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("alter %s %v: %v, want INVALID_CONFIG saying %q", c.cfg.Name, c.cfg.Op, err, c.says)
		}
	}
	// AlterConfigs replaces the whole state: what it does not name goes
	// back to its default.
	rs, err := adm.AlterTopicConfigsState(ctx, []kadm.AlterConfig{{Name: "retention.ms", Value: str("7200000")}}, "t")
	if r, _ := rs.On("t", nil); err != nil || r.Err != nil {
		t.Fatalf("AlterConfigs: %v %v", err, r.Err)
	}
	if age, bytes := retention(); age != 2*time.Hour || bytes != 0 {
		t.Fatalf("after AlterConfigs: %v and %d bytes, want 2h and unbounded", age, bytes)
	}
	tb.stop()
	tb.start("127.0.0.1:0")
	if age, _ := retention(); age != 2*time.Hour {
		t.Fatalf("after a restart: retention %v, want 2h", age)
	}
}

func describe(c kadm.ResourceConfig) string {
	var parts []string
	for _, kv := range c.Configs {
		if kv.Value != nil {
			parts = append(parts, kv.Key+"="+*kv.Value)
		}
	}
	return strings.Join(parts, " ")
}

// DeleteGroups and OffsetDelete: refused while the group has a member
// (NON_EMPTY_GROUP, GROUP_SUBSCRIBED_TO_TOPIC), then they delete the
// committed offsets from the log, durably; a group with neither members
// nor offsets is GROUP_ID_NOT_FOUND.
func TestDeleteGroupsAndOffsets(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tb.createTopic(ctx, "t", 2)
	prod := tb.client(kgo.DefaultProduceTopic("t"), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	for p := range int32(2) {
		if err := prod.ProduceSync(ctx, &kgo.Record{Partition: p, Value: []byte("x")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	member := tb.client(kgo.ConsumerGroup("g"), kgo.ConsumeTopics("t"), kgo.DisableAutoCommit(), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	for n := 0; n < 2; {
		fs := member.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		n += fs.NumRecords()
	}
	if err := member.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatal(err)
	}
	adm := kadm.NewClient(tb.client())
	dg, err := adm.DeleteGroups(ctx, "g")
	if err != nil || !errors.Is(dg["g"].Err, kerr.NonEmptyGroup) {
		t.Fatalf("delete of a group with a member: %v %v, want NON_EMPTY_GROUP", err, dg["g"].Err)
	}
	do, err := adm.DeleteOffsets(ctx, "g", kadm.TopicsSet{"t": {0: {}}})
	if e, _ := do.Lookup("t", 0); err != nil || !errors.Is(e, kerr.GroupSubscribedToTopic) {
		t.Fatalf("offset delete while a member runs: %v %v, want GROUP_SUBSCRIBED_TO_TOPIC", err, e)
	}
	member.Close() // leaves the group
	do, err = adm.DeleteOffsets(ctx, "g", kadm.TopicsSet{"t": {0: {}}})
	if e, _ := do.Lookup("t", 0); err != nil || e != nil {
		t.Fatalf("offset delete: %v %v", err, e)
	}
	if _, ok := tb.log.CommittedOffset("g", "t", 0); ok {
		t.Fatal("g's offset on t/0 is still committed")
	}
	if off, ok := tb.log.CommittedOffset("g", "t", 1); !ok || off != 1 {
		t.Fatalf("g's offset on t/1: %d %v, want 1 (only t/0 was deleted)", off, ok)
	}
	tb.stop()
	tb.start("127.0.0.1:0")
	adm = kadm.NewClient(tb.client())
	if _, ok := tb.log.CommittedOffset("g", "t", 0); ok {
		t.Fatal("after a restart, g's deleted offset on t/0 is back")
	}
	// After the restart the coordinator does not know g; its offsets do.
	dg, err = adm.DeleteGroups(ctx, "g")
	if err != nil || dg["g"].Err != nil {
		t.Fatalf("delete of g: %v %v", err, dg["g"].Err)
	}
	if gs := tb.log.Groups(); len(gs["g"]) != 0 {
		t.Fatalf("g's offsets after its deletion: %v", gs["g"])
	}
	dg, err = adm.DeleteGroups(ctx, "g")
	if err != nil || !errors.Is(dg["g"].Err, kerr.GroupIDNotFound) {
		t.Fatalf("a second delete of g: %v %v, want GROUP_ID_NOT_FOUND", err, dg["g"].Err)
	}
}
