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
//
// A redrive takes the key's entries as they are when it runs, but the
// partition may still hold messages of the key the worker has not reached:
// they park after the redrive and miss it. So the blocker's copy does not
// simply release the key: the worker first looks for entries of the key
// still dead in the DLQ; if there are some, it redrives them too and the
// key drains (copies pass, new messages park) until the copy of the last
// one arrives, where it looks again. The key is released only when its
// DLQ holds nothing dead.

// blocker is the dead letter a parked key waits behind.
type blocker struct {
	id     ferry.ID
	offset uint64
	// drainUntil, when set, is the last entry of the key redriven to catch
	// up: until its copy arrives, redriven copies pass and other messages
	// park.
	drainUntil ferry.ID
	// parked counts the messages parked behind the key (in the DLQ).
	parked int
}

// reserveParkOrWait parks e's key behind e if the partition has room —
// the key is parked already, or fewer keys are than the bound — reserving
// the slot (so concurrent failures cannot overshoot the bound; e's lane
// runs nothing else of the key meanwhile), and reports true. Otherwise it
// sets e aside, with then as what to do once there is room, until a parked
// key is released (resumeWaiting), and reports false. Both under one lock,
// so a release cannot slip between the test and the wait.
//
// e waits off the handler pool, at the head of its lane: its key and the
// watermark wait with it, other keys flow, and fetching goes on, so
// redriven copies arrive, run and release keys. (Waiting on a pool
// goroutine, as it once did, let as many waiting keys as the pool has
// goroutines stop everything, the copies that would free them included.)
// Messages without a key have no order to keep and always have room.
func (w *worker) reserveParkOrWait(e *entry, then func() outcome) bool {
	m := e.m
	if m.Key == nil {
		return true
	}
	w.mu.Lock()
	if _, already := w.parked[string(m.Key)]; already || len(w.parked) < w.c.cfg.maxParkedKeys {
		w.parked[string(m.Key)] = blocker{id: m.ID, offset: m.Offset}
		w.mu.Unlock()
		return true
	}
	e.resume = then
	w.roomWait = append(w.roomWait, e)
	n := len(w.parked)
	w.mu.Unlock()
	w.c.cfg.logger.Warn("parked-key bound reached; a failed message waits for a key to be released", "topic", w.tp.Topic, "partition", w.tp.Partition, "parked_keys", n, m.LogAttrs())
	return false
}

// resumeWaiting restarts, oldest first, the entries waiting for room to
// park, as far as there is room now.
func (w *worker) resumeWaiting() {
	w.mu.Lock()
	var ready []*entry
	for len(w.roomWait) > 0 {
		e := w.roomWait[0]
		k := string(e.m.Key)
		if _, already := w.parked[k]; !already && len(w.parked) >= w.c.cfg.maxParkedKeys {
			break
		}
		w.parked[k] = blocker{id: e.m.ID, offset: e.m.Offset}
		w.roomWait = w.roomWait[1:]
		ready = append(ready, e)
	}
	w.mu.Unlock()
	for _, e := range ready {
		// From a goroutine of its own: the caller may be a pool goroutine,
		// and every other one may be busy.
		go w.start(e)
	}
}

// countParked counts one more message parked behind key.
func (w *worker) countParked(key []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if b, ok := w.parked[string(key)]; ok {
		b.parked++
		w.parked[string(key)] = b
	}
}

// park records m's key as parked behind m (messages without a key have no
// order to keep). m failed while not parked, so it is the key's earliest
// unresolved message and replaces any blocker the key was draining behind.
func (w *worker) park(m *ferry.Message) {
	if m.Key == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.parked[string(m.Key)] = blocker{id: m.ID, offset: m.Offset}
}

// isBlocker reports whether m is the dead letter its key is parked behind
// (not a redriven copy of it: those carry other IDs).
func (w *worker) isBlocker(m *ferry.Message) bool {
	if m.Key == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	b, ok := w.parked[string(m.Key)]
	return ok && b.drainUntil.IsZero() && b.id == m.ID
}

// parkedBehind reports whether m must park, and behind which dead letter.
// The redriven copy of the blocker (or of the last entry a drain waits
// for) passes, and releases the key if nothing of it is left in the DLQ.
func (w *worker) parkedBehind(m *ferry.Message) (ferry.ID, bool) {
	if m.Key == nil {
		return ferry.ID{}, false
	}
	of, isCopy := m.Header(dlq.HeaderRedriveOf)
	w.mu.Lock()
	b, ok := w.parked[string(m.Key)]
	w.mu.Unlock()
	switch {
	case !ok:
		return ferry.ID{}, false
	case b.drainUntil.IsZero() && m.Offset <= b.offset:
		return ferry.ID{}, false
	case b.drainUntil.IsZero() && isCopy && string(of) == b.id.String(),
		!b.drainUntil.IsZero() && isCopy && string(of) == b.drainUntil.String():
		w.releaseOrDrain(m.Key, b)
		return ferry.ID{}, false
	case !b.drainUntil.IsZero() && isCopy:
		return ferry.ID{}, false
	case !b.drainUntil.IsZero():
		return b.drainUntil, true
	}
	return b.id, true
}

// releaseOrDrain unparks key unless entries of it are still dead in the
// DLQ; those are redriven and the key drains until the last one's copy.
// If the DLQ cannot be read, the key stays as it is and the next copy (or
// a later redrive) tries again.
func (w *worker) releaseOrDrain(key []byte, b blocker) {
	q := dlq.Open(w.c.b, w.c.cfg.dlqTopic)
	left, err := q.List(w.ctx, dlq.Filter{Key: key, SourceTopic: w.tp.Topic})
	var mine []*ferry.Message
	for _, e := range left {
		if err == nil && e.Group == w.c.group && e.Original.Partition == w.tp.Partition {
			mine = append(mine, e.Original)
		}
	}
	if err == nil && len(mine) > 0 {
		err = w.c.redrive(w.ctx, q, dlq.Filter{}, mine)
	}
	released := false
	w.mu.Lock()
	if cur, ok := w.parked[string(key)]; !ok || cur.id != b.id || cur.drainUntil != b.drainUntil {
		w.mu.Unlock()
		return // re-parked meanwhile
	}
	switch {
	case err != nil:
		w.c.cfg.logger.Warn("releasing a parked key failed; it stays parked until its next redrive", "key", string(key), "err", err)
	case len(mine) == 0:
		delete(w.parked, string(key))
		released = true
	default:
		b.drainUntil = mine[len(mine)-1].ID
		b.parked = len(mine)
		w.parked[string(key)] = b
	}
	w.mu.Unlock()
	if released {
		w.c.emit(Event{Kind: EventReleased, Message: &ferry.Message{Topic: w.tp.Topic, Partition: w.tp.Partition, Key: key, ID: b.id}})
		w.resumeWaiting()
	}
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
		if b, ok := parked[string(e.Original.Key)]; !ok {
			parked[string(e.Original.Key)] = blocker{id: e.Original.ID, offset: e.Original.Offset}
		} else {
			b.parked++
			parked[string(e.Original.Key)] = b
		}
	}
	return parked, nil
}
