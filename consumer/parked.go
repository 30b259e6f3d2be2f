package consumer

import (
	"context"
	"errors"
	"fmt"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
)

// Parked keys keep a key's order across the dead-letter queue. When a
// message of key K is dead-lettered, K is parked behind it (its blocker):
// K's later messages are not handled but written to the DLQ in order, as
// class "parked" (durable, so the partition's watermark keeps moving and
// nothing waits in memory). Redriving K's entries releases it: when the
// redriven copy of the blocker arrives, K is unparked and the copies are
// handled in their original order. If the blocker fails again it becomes
// K's new blocker and the copies behind it park again.
//
// The parked set is rebuilt from the DLQ when a partition is assigned, so
// it survives restarts and rebalances. A blocker governs only messages
// after it in the partition: a replay of the uncommitted window after a
// rebalance re-handles the key's earlier messages normally.

// blocker is the dead letter a parked key waits behind.
type blocker struct {
	id     ferry.ID
	offset uint64
}

// park records m's key as parked behind m (messages without a key have no
// order to keep).
func (w *worker) park(m *ferry.Message) {
	if m.Key == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.parked[string(m.Key)]; !ok {
		w.parked[string(m.Key)] = blocker{m.ID, m.Offset}
	}
}

// parkedBehind reports whether m must park, and behind which blocker. The
// redriven copy of the blocker releases the key instead.
func (w *worker) parkedBehind(m *ferry.Message) (ferry.ID, bool) {
	if m.Key == nil {
		return ferry.ID{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.parked[string(m.Key)]
	if !ok || m.Offset <= b.offset {
		return ferry.ID{}, false
	}
	if of, has := m.Header(dlq.HeaderRedriveOf); has && string(of) == b.id.String() {
		delete(w.parked, string(m.Key))
		return ferry.ID{}, false
	}
	return b.id, true
}

// loadParked rebuilds a partition's parked keys from the group's DLQ: per
// key, its first dead entry is the blocker.
func (c *Consumer) loadParked(ctx context.Context, tp backend.TopicPartition) (map[string]blocker, error) {
	parked := map[string]blocker{}
	entries, err := dlq.Open(c.b, c.cfg.dlqTopic).List(ctx, dlq.Filter{SourceTopic: tp.Topic})
	if err != nil {
		if errors.Is(err, ferry.ErrTopicNotFound) {
			return parked, nil
		}
		return nil, fmt.Errorf("consumer: load parked keys of %s/%d: %w", tp.Topic, tp.Partition, err)
	}
	for _, e := range entries {
		if e.Group != c.group || e.Original.Partition != tp.Partition || e.Original.Key == nil {
			continue
		}
		if _, ok := parked[string(e.Original.Key)]; !ok {
			parked[string(e.Original.Key)] = blocker{e.Original.ID, e.Original.Offset}
		}
	}
	return parked, nil
}
