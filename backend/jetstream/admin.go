package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

var (
	_ backend.Admin        = (*Backend)(nil)
	_ backend.TopicAlterer = (*Backend)(nil)
	_ backend.GroupDeleter = (*Backend)(nil)
)

// snapshot returns the current entries of kv's keys matching filter
// (deleted keys left out): a watch read up to the end of its initial
// values.
func snapshot(ctx context.Context, kv jetstream.KeyValue, filter string) ([]jetstream.KeyValueEntry, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := kv.Watch(wctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var out []jetstream.KeyValueEntry
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("watch of %s ended early", filter)
			}
			if e == nil {
				return out, nil
			}
			out = append(out, e)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Topics implements backend.Admin: the topics of the topics bucket, each
// with its partitions' streams: RetentionAge from MaxAge, RetentionBytes
// from MaxBytes (a partition's bound), DedupWindow from the duplicate
// window, Bytes the streams' stored bytes. Compact is false: JetStream
// has no compaction by key.
func (b *Backend) Topics(ctx context.Context) ([]backend.TopicInfo, error) {
	entries, err := snapshot(ctx, b.topics, ">")
	if err != nil {
		return nil, fmt.Errorf("jetstream: list topics: %w", err)
	}
	streams := map[string]*jetstream.StreamInfo{}
	list := b.js.ListStreams(ctx, jetstream.WithStreamListSubject(strings.ToLower(b.cfg.prefix)+".>"))
	for info := range list.Info() {
		streams[info.Config.Name] = info
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("jetstream: list streams: %w", err)
	}
	out := []backend.TopicInfo{}
	for _, e := range entries {
		name, ok := decode(e.Key())
		if !ok {
			continue // not a key EnsureTopic writes
		}
		n, err := strconv.Atoi(string(e.Value()))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("jetstream: topic %q has a bad partition count %q: %w", name, e.Value(), ferry.ErrCorrupt)
		}
		ti := backend.TopicInfo{Name: name, Partitions: n}
		configured := false
		for p := range n {
			info := streams[b.stream(backend.TopicPartition{Topic: name, Partition: int32(p)})]
			if info == nil {
				continue // not made yet (EnsureTopic in progress), or deleted under it
			}
			ti.Bytes += int64(info.State.Bytes)
			if !configured {
				configured = true
				ti.RetentionAge, ti.DedupWindow = info.Config.MaxAge, info.Config.Duplicates
				ti.RetentionBytes = max(info.Config.MaxBytes, 0)
			}
		}
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// CreateTopic implements backend.Admin: a stream per partition with
// MaxAge, MaxBytes and the duplicate window t names (0: the backend's,
// WithDuplicateWindow, shortened to the retention if that is shorter).
// JetStream has no compaction by key: Compact is refused with
// ferry.ErrInvalidArgument.
func (b *Backend) CreateTopic(ctx context.Context, t backend.TopicInfo) error {
	switch {
	case t.Name == "" || t.Partitions < 1 || t.Partitions > 4096:
		return fmt.Errorf("jetstream: topic %q with %d partitions: want a name and 1 to 4096 partitions: %w", t.Name, t.Partitions, ferry.ErrInvalidArgument)
	case t.Compact:
		return fmt.Errorf("jetstream: topic %q: JetStream has no compaction by key: %w", t.Name, ferry.ErrInvalidArgument)
	case t.RetentionAge < 0 || t.RetentionBytes < 0 || t.DedupWindow < 0:
		return fmt.Errorf("jetstream: topic %q: retention %v, %d bytes, dedup window %v: want 0 or more: %w", t.Name, t.RetentionAge, t.RetentionBytes, t.DedupWindow, ferry.ErrInvalidArgument)
	case t.RetentionAge > 0 && t.DedupWindow > t.RetentionAge:
		return fmt.Errorf("jetstream: topic %q: dedup window %v longer than its retention %v: %w", t.Name, t.DedupWindow, t.RetentionAge, ferry.ErrInvalidArgument)
	}
	dup := t.DedupWindow
	if dup == 0 {
		dup = b.cfg.dupWindow
	}
	b.forget(t.Name)
	if _, err := b.topics.Create(ctx, encode(t.Name), []byte(strconv.Itoa(t.Partitions))); errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("jetstream: create topic %q: %w", t.Name, ferry.ErrTopicExists)
	} else if err != nil {
		return fmt.Errorf("jetstream: create topic %q: %w", t.Name, err)
	}
	return b.createStreams(ctx, t.Name, t.Partitions, t.RetentionAge, t.RetentionBytes, dup)
}

// DeleteTopic implements backend.Admin: the partitions' streams, the
// groups' owner keys (committed offsets) of its partitions, then the
// topic's key. Backends in other processes keep the partition count
// they cached; their publishes fail once the streams are gone.
func (b *Backend) DeleteTopic(ctx context.Context, topic string) error {
	b.forget(topic)
	defer b.forget(topic)
	e, err := b.topics.Get(ctx, encode(topic))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("jetstream: delete topic %q: %w", topic, ferry.ErrTopicNotFound)
	}
	if err != nil {
		return fmt.Errorf("jetstream: delete topic %q: %w", topic, err)
	}
	n, err := strconv.Atoi(string(e.Value()))
	if err != nil || n < 1 {
		n = 4096 // a bad count: delete whatever partitions exist
	}
	// The streams first: a delete that fails half-way leaves the topic
	// listed, and deleting it again finishes the work, rather than
	// leaving streams no topic names (which a topic of the same name
	// created later would take over, messages included).
	for p := range n {
		err := b.js.DeleteStream(ctx, b.stream(backend.TopicPartition{Topic: topic, Partition: int32(p)}))
		if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("jetstream: delete topic %q: %w", topic, err)
		}
	}
	owners, err := snapshot(ctx, b.groups, "*.o."+encode(topic)+".*")
	if err != nil {
		return fmt.Errorf("jetstream: delete topic %q: owner keys: %w", topic, err)
	}
	for _, o := range owners {
		if err := b.groups.Delete(ctx, o.Key()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("jetstream: delete topic %q: owner key %s: %w", topic, o.Key(), err)
		}
	}
	if err := b.topics.Delete(ctx, encode(topic), jetstream.LastRevision(e.Revision())); err != nil {
		return fmt.Errorf("jetstream: delete topic %q: %w", topic, err)
	}
	return nil
}

// AlterTopic implements backend.TopicAlterer: every partition stream of
// the topic gets MaxAge RetentionAge and MaxBytes RetentionBytes (0: no
// limit), its other config kept. The topics bucket records only the
// partition count, so it is not written. A duplicate window longer than
// the new retention is shortened to it, as CreateTopic and EnsureTopic
// do (the server refuses a longer one); a later, longer retention does
// not lengthen it again (the stream keeps no record of the window it
// had; Topics reports the window in force). A stream already changed
// when a later one fails stays changed: altering again finishes the
// work. ferry.ErrTopicNotFound if there is no such topic, or a partition
// stream is missing (deleted under it, or not made yet).
func (b *Backend) AlterTopic(ctx context.Context, t backend.TopicInfo) error {
	if t.RetentionAge < 0 || t.RetentionBytes < 0 {
		return fmt.Errorf("jetstream: alter topic %q: retention %v, %d bytes: want 0 or more: %w", t.Name, t.RetentionAge, t.RetentionBytes, ferry.ErrInvalidArgument)
	}
	b.forget(t.Name) // read the count the bucket has now
	n, err := b.Partitions(ctx, t.Name)
	if err != nil {
		return err
	}
	maxBytes := t.RetentionBytes
	if maxBytes <= 0 {
		maxBytes = -1
	}
	for p := range n {
		name := b.stream(backend.TopicPartition{Topic: t.Name, Partition: int32(p)})
		st, err := b.js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("jetstream: alter topic %q: no stream %s: %w", t.Name, name, ferry.ErrTopicNotFound)
		}
		if err != nil {
			return fmt.Errorf("jetstream: alter topic %q: stream %s: %w", t.Name, name, err)
		}
		cfg := st.CachedInfo().Config
		dup := cfg.Duplicates
		if t.RetentionAge > 0 && dup > t.RetentionAge {
			dup = t.RetentionAge // the server refuses a duplicate window longer than the retention
		}
		cfg.MaxAge, cfg.MaxBytes, cfg.Duplicates = t.RetentionAge, maxBytes, dup
		if _, err := b.js.UpdateStream(ctx, cfg); errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("jetstream: alter topic %q: no stream %s: %w", t.Name, name, ferry.ErrTopicNotFound)
		} else if err != nil {
			return fmt.Errorf("jetstream: alter topic %q: stream %s: %w", t.Name, name, err)
		}
	}
	return nil
}

// DeleteGroup implements backend.GroupDeleter: the group's owner keys
// (its committed offsets, the keys Groups reads) are deleted; its
// members' heartbeat keys are left to their sessions. A group without
// offsets is no error.
func (b *Backend) DeleteGroup(ctx context.Context, group string) error {
	if group == "" {
		return fmt.Errorf("jetstream: delete group: no group: %w", ferry.ErrInvalidArgument)
	}
	owners, err := snapshot(ctx, b.groups, encode(group)+".o.*.*")
	if err != nil {
		return fmt.Errorf("jetstream: delete group %s: %w", group, err)
	}
	for _, o := range owners {
		if err := b.groups.Delete(ctx, o.Key()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("jetstream: delete group %s: owner key %s: %w", group, o.Key(), err)
		}
	}
	return nil
}

// forget drops topic's cached partition count.
func (b *Backend) forget(topic string) {
	b.mu.Lock()
	delete(b.partitions, topic)
	b.mu.Unlock()
}

// Groups implements backend.Admin: the groups whose owner keys hold a
// committed offset.
func (b *Backend) Groups(ctx context.Context) (map[string][]backend.Offset, error) {
	entries, err := snapshot(ctx, b.groups, "*.o.*.*")
	if err != nil {
		return nil, fmt.Errorf("jetstream: list groups: %w", err)
	}
	out := map[string][]backend.Offset{}
	for _, e := range entries {
		group, tp, ok := parseOwnerKey(e.Key())
		if !ok {
			continue
		}
		var v ownerValue
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			return nil, fmt.Errorf("jetstream: owner key %s: %v: %w", e.Key(), err, ferry.ErrCorrupt)
		}
		if v.Committed {
			out[group] = append(out[group], backend.Offset{TopicPartition: tp, Offset: v.Offset})
		}
	}
	for _, offs := range out {
		sort.Slice(offs, func(i, j int) bool { return offs[i].TopicPartition.Less(offs[j].TopicPartition) })
	}
	return out, nil
}

// parseOwnerKey parses <group>.o.<topic>.<p> (names encoded).
func parseOwnerKey(key string) (string, backend.TopicPartition, bool) {
	parts := strings.Split(key, ".")
	if len(parts) != 4 || parts[1] != "o" {
		return "", backend.TopicPartition{}, false
	}
	group, ok1 := decode(parts[0])
	topic, ok2 := decode(parts[2])
	p, err := strconv.ParseInt(parts[3], 10, 32)
	if !ok1 || !ok2 || err != nil || p < 0 {
		return "", backend.TopicPartition{}, false
	}
	return group, backend.TopicPartition{Topic: topic, Partition: int32(p)}, true
}

// Members implements backend.Admin: the members whose heartbeat keys
// exist and were rewritten within the last session timeout (this
// backend's, WithSessionTimeout; members heartbeat four times in one),
// by the server's clock. A member killed without leaving keeps its key
// until another member of its group expires it; it is left out here once
// its key went that long unchanged.
func (b *Backend) Members(ctx context.Context, group string) ([]string, error) {
	out := []string{}
	if group == "" {
		return out, nil
	}
	entries, err := snapshot(ctx, b.groups, encode(group)+".m.*")
	if err != nil {
		return nil, fmt.Errorf("jetstream: members of %s: %w", group, err)
	}
	if len(entries) == 0 {
		return out, nil
	}
	now, err := b.serverNow(ctx)
	if err != nil {
		return nil, fmt.Errorf("jetstream: members of %s: %w", group, err)
	}
	prefix := encode(group) + ".m."
	for _, e := range entries {
		member, ok := decode(strings.TrimPrefix(e.Key(), prefix))
		if !ok || !strings.HasPrefix(e.Key(), prefix) {
			continue
		}
		if now.Sub(e.Created()) > b.cfg.sessionTimeout {
			continue // gone without leaving
		}
		out = append(out, member)
	}
	sort.Strings(out)
	return out, nil
}

// serverNow returns the server's time (the groups bucket's stream info
// carries it), so a heartbeat's age does not depend on how this
// process's clock is set; this process's clock if the server does not
// say.
func (b *Backend) serverNow(ctx context.Context) (time.Time, error) {
	st, err := b.groups.Status(ctx)
	if err != nil {
		return time.Time{}, err
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil && !bs.StreamInfo().TimeStamp.IsZero() {
		return bs.StreamInfo().TimeStamp, nil
	}
	return time.Now(), nil
}

// SetCommitted implements backend.Admin: each partition's owner key gets
// the offset, as Commit writes it (compare-and-set), its owner kept. A
// live owner's next commit replaces it.
func (b *Backend) SetCommitted(ctx context.Context, group string, offsets ...backend.Offset) error {
	if group == "" {
		return fmt.Errorf("jetstream: set committed offsets: no group: %w", ferry.ErrInvalidArgument)
	}
	for _, o := range offsets {
		n, err := b.Partitions(ctx, o.Topic)
		if err != nil {
			return err
		}
		if o.Partition < 0 || int(o.Partition) >= n {
			return fmt.Errorf("jetstream: set committed offset of %s on %s/%d: the topic has %d partitions: %w", group, o.Topic, o.Partition, n, ferry.ErrInvalidArgument)
		}
		if err := b.setCommitted(ctx, group, o); err != nil {
			return fmt.Errorf("jetstream: set committed offset of %s on %s/%d: %w", group, o.Topic, o.Partition, err)
		}
	}
	return nil
}

func (b *Backend) setCommitted(ctx context.Context, group string, o backend.Offset) error {
	key := b.ownerKey(group, o.TopicPartition)
	for range 10 {
		var v ownerValue
		var rev uint64
		e, err := b.groups.Get(ctx, key)
		switch {
		case err == nil:
			if err := json.Unmarshal(e.Value(), &v); err != nil {
				return fmt.Errorf("owner key %s: %v: %w", key, err, ferry.ErrCorrupt)
			}
			rev = e.Revision()
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return err
		}
		v.Offset, v.Committed = o.Offset, true
		data, _ := json.Marshal(v)
		if rev == 0 {
			_, err = b.groups.Create(ctx, key, data)
		} else {
			_, err = b.groups.Update(ctx, key, data, rev)
		}
		if err == nil || !isConflict(err) {
			return err
		}
		// A member wrote first: reread and write again.
	}
	return fmt.Errorf("owner key %s keeps changing", key)
}
