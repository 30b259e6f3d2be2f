package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

var (
	_ backend.Admin        = (*Backend)(nil)
	_ backend.TopicAlterer = (*Backend)(nil)
	_ backend.GroupDeleter = (*Backend)(nil)
)

// internalTopics are Kafka's own topics, left out of Topics even where a
// broker does not mark them internal.
var internalTopics = map[string]bool{"__consumer_offsets": true, "__transaction_state": true}

// Topics implements backend.Admin: the cluster's topics but Kafka's
// internal ones, with retention.ms, retention.bytes and cleanup.policy
// read from their configs. DedupWindow is always 0 (Kafka has no
// message-ID deduplication). Bytes is the sum over partitions of each
// partition's size on one replica (the largest a broker reports, which
// is the leader's but for a replica catching up), from DescribeLogDirs;
// -1 where the brokers do not answer it (ferry serve does not).
func (b *Backend) Topics(ctx context.Context) ([]backend.TopicInfo, error) {
	// A metadata request of its own: kadm's answer may come from the
	// client's cache (up to 5s old), without a topic another process
	// just created.
	meta, err := b.metadata(ctx)
	if err != nil {
		return nil, fmt.Errorf("kafka: list topics: %w", err)
	}
	partitions := map[string]int{}
	var names []string
	for _, t := range meta.Topics {
		if t.Topic == nil || t.IsInternal || internalTopics[*t.Topic] || t.ErrorCode == kerr.UnknownTopicOrPartition.Code {
			continue
		}
		names = append(names, *t.Topic)
		partitions[*t.Topic] = len(t.Partitions)
	}
	sort.Strings(names)
	out := []backend.TopicInfo{}
	if len(names) == 0 {
		return out, nil
	}
	rcs, err := b.adm.DescribeTopicConfigs(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("kafka: describe topic configs: %w", err)
	}
	configs := map[string]kadm.ResourceConfig{}
	for _, rc := range rcs {
		configs[rc.Name] = rc
	}
	sizes := b.partitionSizes(ctx, names)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, name := range names {
		rc, ok := configs[name]
		if !ok || errors.Is(rc.Err, kerr.UnknownTopicOrPartition) {
			continue // deleted since it was listed
		}
		if rc.Err != nil {
			return nil, fmt.Errorf("kafka: configs of topic %q: %w", name, rc.Err)
		}
		ti := backend.TopicInfo{Name: name, Partitions: partitions[name], Bytes: -1}
		if err := applyConfigs(&ti, rc.Configs); err != nil {
			return nil, err
		}
		if sizes != nil {
			ti.Bytes = topicBytes(sizes, name, ti.Partitions)
		}
		out = append(out, ti)
	}
	return out, nil
}

// applyConfigs sets ti's retention and compaction from a topic's configs.
func applyConfigs(ti *backend.TopicInfo, cs []kadm.Config) error {
	for _, c := range cs {
		if c.Value == nil {
			continue
		}
		v := *c.Value
		bad := func(err error) error {
			return fmt.Errorf("kafka: topic %q: config %s=%q: %v: %w", ti.Name, c.Key, v, err, ferry.ErrCorrupt)
		}
		switch c.Key {
		case "retention.ms":
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return bad(err)
			}
			ti.RetentionAge = 0
			if ms > 0 {
				ti.RetentionAge = time.Duration(ms) * time.Millisecond
			}
		case "retention.bytes":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return bad(err)
			}
			ti.RetentionBytes = max(n, 0)
		case "cleanup.policy":
			ti.Compact = slices.Contains(strings.Split(strings.ReplaceAll(v, " ", ""), ","), "compact")
		}
	}
	return nil
}

// partitionSizes returns each partition's size (the largest any broker
// reports for it), or nil if the brokers do not describe their log
// directories.
func (b *Backend) partitionSizes(ctx context.Context, topics []string) map[backend.TopicPartition]int64 {
	wanted := map[string]bool{}
	for _, t := range topics {
		wanted[t] = true
	}
	dirs, err := b.adm.DescribeAllLogDirs(ctx, nil)
	if err != nil {
		return nil
	}
	sizes := map[backend.TopicPartition]int64{}
	failed := false
	dirs.Each(func(d kadm.DescribedLogDir) {
		if d.Err != nil {
			failed = true
			return
		}
		d.Topics.Each(func(p kadm.DescribedLogDirPartition) {
			if p.IsFuture || !wanted[p.Topic] {
				return
			}
			tp := backend.TopicPartition{Topic: p.Topic, Partition: p.Partition}
			if cur, ok := sizes[tp]; !ok || p.Size > cur {
				sizes[tp] = p.Size
			}
		})
	})
	if failed {
		return nil
	}
	return sizes
}

// topicBytes sums a topic's partition sizes; -1 if one is unknown.
func topicBytes(sizes map[backend.TopicPartition]int64, topic string, partitions int) int64 {
	var total int64
	for p := range partitions {
		n, ok := sizes[backend.TopicPartition{Topic: topic, Partition: int32(p)}]
		if !ok {
			return -1
		}
		total += n
	}
	return total
}

// CreateTopic implements backend.Admin: retention and compaction become
// the topic's retention.ms, retention.bytes and cleanup.policy, with the
// backend's replication factor (WithReplicationFactor). No RetentionAge
// is retention.ms -1 (kept forever), not the brokers' default. Kafka has no
// message-ID deduplication window: a nonzero DedupWindow is refused with
// ferry.ErrInvalidArgument. It returns once the brokers' metadata shows
// the topic (or after a few seconds if it never does).
func (b *Backend) CreateTopic(ctx context.Context, t backend.TopicInfo) error {
	switch {
	case t.Name == "" || t.Partitions < 1 || t.Partitions > 1<<20:
		return fmt.Errorf("kafka: topic %q with %d partitions: want a name and at least 1 partition: %w", t.Name, t.Partitions, ferry.ErrInvalidArgument)
	case t.DedupWindow != 0:
		return fmt.Errorf("kafka: topic %q: dedup window %v: Kafka has no message-ID deduplication window (its idempotent producer drops only its own retries): %w", t.Name, t.DedupWindow, ferry.ErrInvalidArgument)
	case t.RetentionAge < 0 || t.RetentionBytes < 0:
		return fmt.Errorf("kafka: topic %q: retention %v, %d bytes: want 0 (unbounded) or more: %w", t.Name, t.RetentionAge, t.RetentionBytes, ferry.ErrInvalidArgument)
	case t.RetentionAge > 0 && t.RetentionAge < time.Millisecond:
		return fmt.Errorf("kafka: topic %q: retention %v: Kafka counts it in milliseconds: %w", t.Name, t.RetentionAge, ferry.ErrInvalidArgument)
	}
	configs := map[string]*string{}
	set := func(k, v string) { configs[k] = &v }
	// No retention is forever, as everywhere in ferry, not the brokers'
	// default (Kafka's is 7 days).
	set("retention.ms", "-1")
	if t.RetentionAge > 0 {
		set("retention.ms", strconv.FormatInt(t.RetentionAge.Milliseconds(), 10))
	}
	if t.RetentionBytes > 0 {
		set("retention.bytes", strconv.FormatInt(t.RetentionBytes, 10))
	}
	if t.Compact {
		set("cleanup.policy", "compact")
	}
	b.forget(t.Name)
	resp, err := b.adm.CreateTopic(ctx, int32(t.Partitions), b.cfg.replication, configs, t.Name)
	if err == nil {
		err = resp.Err
	}
	switch {
	case errors.Is(err, kerr.TopicAlreadyExists):
		return fmt.Errorf("kafka: create topic %q: %v: %w", t.Name, err, ferry.ErrTopicExists)
	case errors.Is(err, kerr.InvalidConfig), errors.Is(err, kerr.InvalidTopicException), errors.Is(err, kerr.InvalidPartitions),
		errors.Is(err, kerr.InvalidReplicationFactor), errors.Is(err, kerr.InvalidRequest):
		return fmt.Errorf("kafka: create topic %q: %v (%s): %w", t.Name, err, resp.ErrMessage, ferry.ErrInvalidArgument)
	case err != nil:
		return fmt.Errorf("kafka: create topic %q: %w", t.Name, err)
	}
	b.awaitMetadata(ctx, t.Name, true)
	return nil
}

// DeleteTopic implements backend.Admin. It returns once the brokers'
// metadata no longer shows the topic (or after a few seconds).
func (b *Backend) DeleteTopic(ctx context.Context, topic string) error {
	b.forget(topic)
	defer b.forget(topic) // a Partitions call meanwhile may have cached it again
	_, err := b.adm.DeleteTopic(ctx, topic)
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return fmt.Errorf("kafka: delete topic %q: %w", topic, ferry.ErrTopicNotFound)
	case err != nil:
		return fmt.Errorf("kafka: delete topic %q: %w", topic, err)
	}
	b.awaitMetadata(ctx, topic, false)
	return nil
}

// AlterTopic implements backend.TopicAlterer with IncrementalAlterConfigs:
// retention.ms and retention.bytes (-1 for none, as CreateTopic writes).
func (b *Backend) AlterTopic(ctx context.Context, t backend.TopicInfo) error {
	switch {
	case t.RetentionAge < 0 || t.RetentionBytes < 0:
		return fmt.Errorf("kafka: alter topic %q: retention %v, %d bytes: want 0 (unbounded) or more: %w", t.Name, t.RetentionAge, t.RetentionBytes, ferry.ErrInvalidArgument)
	case t.RetentionAge > 0 && t.RetentionAge < time.Millisecond:
		return fmt.Errorf("kafka: alter topic %q: retention %v: Kafka counts it in milliseconds: %w", t.Name, t.RetentionAge, ferry.ErrInvalidArgument)
	}
	ms, bytes := "-1", "-1"
	if t.RetentionAge > 0 {
		ms = strconv.FormatInt(t.RetentionAge.Milliseconds(), 10)
	}
	if t.RetentionBytes > 0 {
		bytes = strconv.FormatInt(t.RetentionBytes, 10)
	}
	rs, err := b.adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Name: "retention.ms", Value: &ms}, {Name: "retention.bytes", Value: &bytes}}, t.Name)
	if err == nil {
		var r kadm.AlterConfigsResponse
		if r, err = rs.On(t.Name, nil); err == nil {
			err = r.Err
		}
	}
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("kafka: alter topic %q: %w", t.Name, ferry.ErrTopicNotFound)
	case err != nil:
		return fmt.Errorf("kafka: alter topic %q: %w", t.Name, err)
	}
	return nil
}

// DeleteGroup implements backend.GroupDeleter with DeleteGroups: Kafka
// deletes the group with its committed offsets. A group with members is
// refused (NON_EMPTY_GROUP); one Kafka does not know is no error.
func (b *Backend) DeleteGroup(ctx context.Context, group string) error {
	rs, err := b.adm.DeleteGroups(ctx, group)
	if err == nil {
		err = rs[group].Err
	}
	switch {
	case errors.Is(err, kerr.GroupIDNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("kafka: delete group %q: %w", group, err)
	}
	return nil
}

// forget drops topic's cached partition count.
func (b *Backend) forget(topic string) {
	b.mu.Lock()
	delete(b.parts, topic)
	b.mu.Unlock()
}

// metadataWait bounds how long CreateTopic and DeleteTopic wait for the
// brokers' metadata to show the change (Kafka applies it asynchronously).
const metadataWait = 5 * time.Second

// metadata asks a broker for the metadata of topics (all if none),
// bypassing the client's cache.
func (b *Backend) metadata(ctx context.Context, topics ...string) (*kmsg.MetadataResponse, error) {
	req := kmsg.NewPtrMetadataRequest()
	if len(topics) > 0 {
		req.Topics = []kmsg.MetadataRequestTopic{}
	}
	for _, t := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(t)
		req.Topics = append(req.Topics, rt)
	}
	return req.RequestWith(ctx, b.prod)
}

// awaitMetadata polls the metadata until topic exists (or no longer
// does), ctx ends or metadataWait passed, then drops what the clients
// cached of it: the producer's state for a topic deleted (and perhaps
// created anew) and the metadata Partitions reads.
func (b *Backend) awaitMetadata(ctx context.Context, topic string, exists bool) {
	defer b.prod.PurgeTopicsFromClient(topic)
	deadline := time.Now().Add(metadataWait)
	for wait := 5 * time.Millisecond; time.Now().Before(deadline); wait = min(2*wait, 200*time.Millisecond) {
		if meta, err := b.metadata(ctx, topic); err == nil {
			there := false
			for _, t := range meta.Topics {
				if t.Topic != nil && *t.Topic == topic && t.ErrorCode == 0 && len(t.Partitions) > 0 {
					there = true
				}
			}
			if there == exists {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Groups implements backend.Admin: the groups ListGroups names (share
// groups left out) that have committed offsets.
func (b *Backend) Groups(ctx context.Context) (map[string][]backend.Offset, error) {
	listed, err := b.adm.ListGroups(ctx)
	if err != nil {
		return nil, fmt.Errorf("kafka: list groups: %w", err)
	}
	var names []string
	for name, g := range listed {
		if g.ProtocolType != "share" {
			names = append(names, name)
		}
	}
	out := map[string][]backend.Offset{}
	if len(names) == 0 {
		return out, nil
	}
	sort.Strings(names)
	fetched := b.adm.FetchManyOffsets(ctx, names...)
	for _, name := range names {
		r, ok := fetched[name]
		if !ok || errors.Is(r.Err, kerr.GroupIDNotFound) {
			continue // deleted since it was listed
		}
		if r.Err != nil {
			return nil, fmt.Errorf("kafka: committed offsets of group %s: %w", name, r.Err)
		}
		var offs []backend.Offset
		for topic, ps := range r.Fetched {
			for p, o := range ps {
				if o.Err != nil || o.At < 0 {
					continue
				}
				offs = append(offs, backend.Offset{TopicPartition: backend.TopicPartition{Topic: topic, Partition: p}, Offset: uint64(o.At)})
			}
		}
		if len(offs) == 0 {
			continue
		}
		sort.Slice(offs, func(i, j int) bool { return offs[i].TopicPartition.Less(offs[j].TopicPartition) })
		out[name] = offs
	}
	return out, nil
}

// Members implements backend.Admin: the group's members as the
// coordinator describes them, by client ID. A ferry member's client ID
// is its member name (Join sets it), so these are the names the runtime
// uses; a member of another client that sent no client ID is named by
// its Kafka member ID.
func (b *Backend) Members(ctx context.Context, group string) ([]string, error) {
	out := []string{}
	if group == "" {
		return out, nil
	}
	described, err := b.adm.DescribeGroups(ctx, group)
	if err != nil {
		return nil, fmt.Errorf("kafka: describe group %s: %w", group, err)
	}
	g, ok := described[group]
	if !ok || errors.Is(g.Err, kerr.GroupIDNotFound) || g.State == "Dead" {
		return out, nil
	}
	if g.Err != nil {
		return nil, fmt.Errorf("kafka: describe group %s: %w", group, g.Err)
	}
	for _, m := range g.Members {
		name := m.ClientID
		if name == "" {
			name = m.MemberID
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

// SetCommitted implements backend.Admin with an offset commit outside
// any generation (what kafka-consumer-groups --reset-offsets sends).
// Kafka refuses it while the group has members (UNKNOWN_MEMBER_ID): the
// error says so.
func (b *Backend) SetCommitted(ctx context.Context, group string, offsets ...backend.Offset) error {
	if group == "" {
		return fmt.Errorf("kafka: set committed offsets: no group: %w", ferry.ErrInvalidArgument)
	}
	if len(offsets) == 0 {
		return nil
	}
	commit := kadm.Offsets{}
	for _, o := range offsets {
		if o.Offset > 1<<63-1 {
			return fmt.Errorf("kafka: offset %d of %s/%d: out of Kafka's range: %w", o.Offset, o.Topic, o.Partition, ferry.ErrInvalidArgument)
		}
		if commit[o.Topic] == nil {
			commit[o.Topic] = map[int32]kadm.Offset{}
		}
		commit[o.Topic][o.Partition] = kadm.Offset{Topic: o.Topic, Partition: o.Partition, At: int64(o.Offset), LeaderEpoch: -1}
	}
	resps, err := b.adm.CommitOffsets(ctx, group, commit)
	if err != nil {
		return fmt.Errorf("kafka: set committed offsets of %s: %w", group, err)
	}
	var errs []error
	for topic, ps := range resps {
		for p, r := range ps {
			switch {
			case r.Err == nil:
			case errors.Is(r.Err, kerr.UnknownTopicOrPartition):
				errs = append(errs, fmt.Errorf("kafka: set committed offset of %s on %s/%d: %v: %w", group, topic, p, r.Err, ferry.ErrTopicNotFound))
			case errors.Is(r.Err, kerr.UnknownMemberID), errors.Is(r.Err, kerr.IllegalGeneration), errors.Is(r.Err, kerr.RebalanceInProgress):
				errs = append(errs, fmt.Errorf("kafka: set committed offset of %s on %s/%d: the group has live members, and Kafka takes offsets from outside the group only while it has none: %w", group, topic, p, r.Err))
			default:
				errs = append(errs, fmt.Errorf("kafka: set committed offset of %s on %s/%d: %w", group, topic, p, r.Err))
			}
		}
	}
	return errors.Join(errs...)
}
