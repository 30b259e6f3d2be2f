package consumer

import (
	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/dlq"
)

// Parked keys keep a key's order across the dead-letter queue. When a
// message of key K is dead-lettered, K is parked behind it (its blocker):
// K's later messages are not handled but written to the DLQ in order, as
// class "parked" (durable, so the partition's watermark keeps moving and
// nothing waits in memory).
//
// Whether K is parked is read from the DLQ alone: K is parked exactly
// while the group's DLQ holds an unresolved entry of K from this partition
// (dlq.Index, which the consumer keeps caught up). Nothing else holds the
// state, so a crash, restart or rebalance anywhere leaves it as it was.
//
// Only the partition's owner brings K's entries back, and it does so in
// K's lane, straight from the DLQ (settle.go): an operator's redrive only
// marks entries requested. The owner handles K's entries in their
// dead-letter order — which is K's order, since one lane writes them —
// before any later message of K, and K is released when none is left
// unresolved. A message whose ID the DLQ knows (its outcome is recorded
// there) is never handled again from the partition: that is the blocker
// replayed from the uncommitted window after a crash, or an entry handled
// from the DLQ since.

// pk names the partition's share of the group's DLQ.
func (w *worker) pk() dlq.PartitionKey {
	return dlq.PartitionKey{Group: w.c.group, Topic: w.tp.Topic, Partition: w.tp.Partition}
}

// isParked reports whether m's key waits behind an unresolved entry of an
// earlier message. A replay of m from the uncommitted window (the previous
// owner handled it, then dead-lettered a later message of its key) is not:
// it is handled again, in its place, rather than appended to the DLQ behind
// its key's newer messages (see dlq.Index.HasAtOrBefore).
func (w *worker) isParked(m *ferry.Message) bool {
	return m.Key != nil && w.c.index.HasAtOrBefore(w.pk(), m.Key, m.Offset)
}

// reserveParkOrWait makes sure e's key may park — it is parked already,
// or fewer keys are than the bound — reserving the slot (so concurrent
// failures cannot overshoot the bound; e's lane runs nothing else of the
// key meanwhile), and reports true; the caller's park then releases the
// reservation. Otherwise it sets e aside, with then as what to do once
// there is room, until a parked key is released (resumeWaiting), and
// reports false. Both under one lock, so a release cannot slip between the
// test and the wait.
//
// e waits off the handler pool, at the head of its lane: its key and the
// watermark wait with it, other keys flow, and fetching goes on, so
// requested entries are handled and release keys. Messages without a key
// have no order to keep and always have room.
func (w *worker) reserveParkOrWait(e *entry, then func() outcome) bool {
	m := e.m
	if m.Key == nil {
		return true
	}
	w.mu.Lock()
	if w.roomLocked(m.Key) {
		w.reserved[string(m.Key)] = true
		w.mu.Unlock()
		return true
	}
	e.resume = then
	w.roomWait = append(w.roomWait, e)
	w.mu.Unlock()
	keys, _ := w.c.index.Parked(w.pk())
	w.c.cfg.logger.Warn("parked-key bound reached; a failed message waits for a key to be released", "topic", w.tp.Topic, "partition", w.tp.Partition, "parked_keys", keys, m.LogAttrs())
	return false
}

// roomLocked reports whether key may park now: the keys parked in the
// index and those reserved, a key that is both (its dead letter indexed,
// its reservation not yet ended) counted once.
func (w *worker) roomLocked(key []byte) bool {
	pk := w.pk()
	if w.reserved[string(key)] || w.c.index.Has(pk, key) {
		return true
	}
	keys, _ := w.c.index.Parked(pk)
	for k := range w.reserved {
		if !w.c.index.Has(pk, []byte(k)) {
			keys++
		}
	}
	return keys < w.c.cfg.maxParkedKeys
}

// unreserve ends key's reservation: its dead letter is in the index (or
// was not written, which leaves room for a waiting key).
func (w *worker) unreserve(key []byte) {
	if key == nil {
		return
	}
	w.mu.Lock()
	delete(w.reserved, string(key))
	w.mu.Unlock()
	w.resumeWaiting()
}

// resumeWaiting restarts, oldest first, the entries waiting for room to
// park, as far as there is room now.
func (w *worker) resumeWaiting() {
	w.mu.Lock()
	for len(w.roomWait) > 0 {
		e := w.roomWait[0]
		if !w.roomLocked(e.m.Key) {
			break
		}
		w.reserved[string(e.m.Key)] = true
		w.roomWait = w.roomWait[1:]
		w.queueLocked(e)
	}
	w.mu.Unlock()
}
