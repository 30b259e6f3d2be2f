package consumer

import (
	"context"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
)

// A purge takes dead letters out of the DLQ while the consumer runs. When
// one of them is what a parked key waits behind (its blocker: a dead
// letter, or a scheduled retry), nothing would ever release the key: no
// redriven copy of the blocker will come. So the consumer follows the DLQ
// topic's purge markers, and each purged blocker has its key re-evaluated
// from the DLQ: released if nothing of it is dead any more, else parked
// behind its first dead entry, whose redriven copy then releases it as
// usual. (Purges made while no consumer ran need nothing: a partition's
// parked keys are loaded from the dead entries when it starts.)

// purgePoll is how often watchPurges looks at the end of the DLQ topic.
const purgePoll = 250 * time.Millisecond

// watchPurges follows the DLQ topic from its end until ctx ends. It looks
// at the topic's end and fetches only what is there: a fetch that waits
// for new records would hold, on backends that share one fetcher per
// partition (Kafka, JetStream), every other reader of the DLQ — the
// worker releasing a key among them.
func (c *Consumer) watchPurges(ctx context.Context) {
	tp := backend.TopicPartition{Topic: c.cfg.dlqTopic, Partition: 0}
	var off uint64
	for {
		_, end, err := c.b.Bounds(ctx, tp)
		if err == nil {
			off = end
			break
		}
		if !sleepCtx(ctx, purgePoll) {
			return
		}
	}
	for {
		_, end, err := c.b.Bounds(ctx, tp)
		if err != nil || end <= off {
			if !sleepCtx(ctx, purgePoll) {
				return
			}
			continue
		}
		res, err := c.b.Fetch(ctx, tp, off, 1000)
		if err != nil {
			if !sleepCtx(ctx, purgePoll) {
				return
			}
			continue
		}
		var purged map[ferry.ID]bool
		for _, r := range res.Messages {
			if s, ok := r.Header(dlq.HeaderState); !ok || string(s) != dlq.StatePurged {
				continue
			}
			v, _ := r.Header(dlq.HeaderOriginalID)
			if id, err := ferry.ParseID(string(v)); err == nil {
				if purged == nil {
					purged = map[ferry.ID]bool{}
				}
				purged[id] = true
			}
		}
		off = max(off, res.Next)
		if purged != nil {
			c.mu.Lock()
			ws := make([]*worker, 0, len(c.workers))
			for _, w := range c.workers {
				ws = append(ws, w)
			}
			c.mu.Unlock()
			for _, w := range ws {
				w.reevaluate(purged)
			}
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// reevaluate re-reads from the DLQ the keys parked behind a purged
// blocker. A key draining a redrive is left to the drain, which looks at
// the DLQ again when it ends.
func (w *worker) reevaluate(purged map[ferry.ID]bool) {
	w.mu.Lock()
	stale := map[string]blocker{}
	for k, b := range w.parked {
		if b.drainUntil.IsZero() && purged[b.id] {
			stale[k] = b
		}
	}
	w.mu.Unlock()
	if len(stale) > 0 {
		w.refreshKeys(stale)
	}
}

// refreshKeys re-reads the given parked keys from the DLQ: a key whose
// blocker is no longer dead is parked behind its first dead entry, or
// released if it has none. A key whose blocker changed since stale was
// taken is left as it is.
func (w *worker) refreshKeys(stale map[string]blocker) {
	entries, err := dlq.Open(w.c.b, w.c.cfg.dlqTopic).List(w.ctx, dlq.Filter{SourceTopic: w.tp.Topic})
	if err != nil {
		w.c.cfg.logger.Warn("re-reading parked keys from the DLQ failed; they stay parked until the next purge, redrive or restart", "topic", w.tp.Topic, "partition", w.tp.Partition, "err", err)
		return
	}
	left := map[string][]dlq.Entry{}
	for _, e := range entries {
		if e.Group == w.c.group && e.Original.Partition == w.tp.Partition && e.Original.Key != nil {
			if _, ok := stale[string(e.Original.Key)]; ok {
				left[string(e.Original.Key)] = append(left[string(e.Original.Key)], e)
			}
		}
	}
	var released [][]byte
	w.mu.Lock()
	for k, was := range stale {
		if cur, ok := w.parked[k]; !ok || cur.id != was.id || cur.drainUntil != was.drainUntil {
			continue // changed meanwhile
		}
		if dead := left[k]; len(dead) > 0 {
			if dead[0].Original.ID != was.id {
				w.parked[k] = blocker{id: dead[0].Original.ID, offset: dead[0].Original.Offset, parked: len(dead) - 1}
			}
			continue
		}
		delete(w.parked, k)
		released = append(released, []byte(k))
	}
	w.mu.Unlock()
	for _, k := range released {
		w.c.emit(Event{Kind: EventReleased, Message: &ferry.Message{Topic: w.tp.Topic, Partition: w.tp.Partition, Key: k, ID: stale[string(k)].id}})
	}
	if len(released) > 0 {
		w.resumeWaiting()
	}
}
