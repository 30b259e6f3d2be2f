package embedded

import (
	"context"
	"sort"

	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/commitlog"
)

var (
	_ backend.Admin        = (*Backend)(nil)
	_ backend.TopicAlterer = (*Backend)(nil)
	_ backend.GroupDeleter = (*Backend)(nil)
)

// Topics implements backend.Admin.
func (b *Backend) Topics(context.Context) ([]backend.TopicInfo, error) {
	out := []backend.TopicInfo{}
	for _, t := range b.log.Topics() {
		var bytes int64
		for _, p := range t.Partitions {
			bytes += p.Bytes
		}
		out = append(out, backend.TopicInfo{Name: t.Name, Partitions: len(t.Partitions), RetentionAge: t.Config.RetentionAge,
			RetentionBytes: t.Config.RetentionBytes, Compact: t.Config.Compact, DedupWindow: t.Config.DedupWindow, Bytes: bytes})
	}
	return out, nil
}

// CreateTopic implements backend.Admin.
func (b *Backend) CreateTopic(ctx context.Context, t backend.TopicInfo) error {
	return b.log.CreateTopic(ctx, t.Name, commitlog.TopicConfig{Partitions: t.Partitions, RetentionAge: t.RetentionAge,
		RetentionBytes: t.RetentionBytes, Compact: t.Compact, DedupWindow: t.DedupWindow})
}

// AlterTopic implements backend.TopicAlterer.
func (b *Backend) AlterTopic(ctx context.Context, t backend.TopicInfo) error {
	info, err := b.log.Topic(t.Name)
	if err != nil {
		return err
	}
	c := info.Config
	c.RetentionAge, c.RetentionBytes = t.RetentionAge, t.RetentionBytes
	return b.log.AlterTopic(ctx, t.Name, c)
}

// DeleteGroup implements backend.GroupDeleter.
func (b *Backend) DeleteGroup(ctx context.Context, group string) error {
	return b.log.DeleteOffsets(ctx, group, "")
}

// DeleteTopic implements backend.Admin.
func (b *Backend) DeleteTopic(ctx context.Context, topic string) error {
	return b.log.DeleteTopic(ctx, topic)
}

// Groups implements backend.Admin.
func (b *Backend) Groups(context.Context) (map[string][]backend.Offset, error) {
	out := map[string][]backend.Offset{}
	for g, offs := range b.log.Groups() {
		list := make([]backend.Offset, 0, len(offs))
		for _, o := range offs {
			list = append(list, backend.Offset{TopicPartition: backend.TopicPartition{Topic: o.Topic, Partition: o.Partition}, Offset: o.Offset})
		}
		sort.Slice(list, func(i, j int) bool { return list[i].TopicPartition.Less(list[j].TopicPartition) })
		out[g] = list
	}
	return out, nil
}

// Members implements backend.Admin: the members of this process's
// sessions (the embedded log has one owner process).
func (b *Backend) Members(_ context.Context, group string) ([]string, error) {
	b.mu.Lock()
	g := b.groups[group]
	b.mu.Unlock()
	out := []string{}
	if g == nil {
		return out, nil
	}
	g.mu.Lock()
	for name := range g.members {
		out = append(out, name)
	}
	g.mu.Unlock()
	sort.Strings(out)
	return out, nil
}

// SetCommitted implements backend.Admin.
func (b *Backend) SetCommitted(ctx context.Context, group string, offsets ...backend.Offset) error {
	offs := make([]commitlog.Offset, 0, len(offsets))
	for _, o := range offsets {
		offs = append(offs, commitlog.Offset{Topic: o.Topic, Partition: o.Partition, Offset: o.Offset})
	}
	return b.log.CommitOffsets(ctx, group, offs...)
}
