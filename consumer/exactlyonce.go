package consumer

import (
	"context"
	"fmt"
	"sync"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/idempotency"
)

// Idempotent is a middleware that skips messages store has already seen
// and marks the others after the handler succeeds. A crash between the
// handler's effect and the mark can still repeat the effect; for effects
// that must happen once, write them in the same transaction as the mark
// (WithExactlyOnce for outputs to the log, or the Postgres inbox).
func Idempotent(store idempotency.Store) Middleware {
	return func(next Handler) Handler {
		return func(ctx context.Context, m *ferry.Message) error {
			seen, err := store.Seen(ctx, m.ID)
			if err != nil {
				return fmt.Errorf("idempotency check: %w", err)
			}
			if seen {
				return nil
			}
			if err := next(ctx, m); err != nil {
				return err
			}
			return store.Mark(ctx, m.ID)
		}
	}
}

// WithExactlyOnce makes consume-transform-produce exactly once on a backend
// that can publish and commit atomically (backend.Transactional): the
// messages a handler passes to Emit and the record marking its input
// processed are written in one atomic batch, and an input already marked
// is skipped when redelivered. store must live in the backend's log.
func WithExactlyOnce(store *idempotency.Log) Opt {
	return optFunc(func(c *cfg) { c.exactlyOnce = store })
}

type outputs struct {
	mu   sync.Mutex
	msgs []*ferry.Message
}

// Emit stages messages to publish when the current handler call succeeds
// (they are dropped if it fails). Messages without an ID get one derived
// from the input's ID and their position, so a redelivered input produces
// the same IDs and the log deduplicates them. It must be called from a
// handler run by a Consumer.
func Emit(ctx context.Context, msgs ...*ferry.Message) error {
	ci, _ := ctx.Value(callKey{}).(*callInfo)
	if ci == nil || ci.out == nil {
		return fmt.Errorf("consumer.Emit called outside a handler: %w", ferry.ErrInvalidArgument)
	}
	ci.out.mu.Lock()
	ci.out.msgs = append(ci.out.msgs, msgs...)
	ci.out.mu.Unlock()
	return nil
}

// publishOutputs writes what the handler emitted for input m, with the
// processed record in exactly-once mode and, for an input handled from the
// DLQ, its entry's marker (in the same atomic batch under exactly-once, so
// a crash can neither repeat the outputs nor lose the marker; after the
// outputs otherwise), retrying until it succeeds or the worker stops
// (false: the input is abandoned and will be handled again).
func (w *worker) publishOutputs(m *ferry.Message, out []*ferry.Message, marker *ferry.Message) bool {
	c := w.c
	if len(out) == 0 && c.cfg.exactlyOnce == nil {
		return marker == nil || w.writeOutcome(marker)
	}
	for i, o := range out {
		if o.ID.IsZero() {
			o.ID = ferry.DeriveID("output", fmt.Sprint(i), m.ID)
		}
	}
	publish := func() error { return c.b.Publish(w.ctx, out...) }
	if eo := c.cfg.exactlyOnce; eo != nil {
		tx := c.b.(backend.Transactional)
		batch := append(append([]*ferry.Message(nil), out...), eo.Marker(m.ID))
		if marker != nil {
			batch = append(batch, marker)
		}
		publish = func() error {
			// The partition's watermark rides along: a backend that fences
			// by group membership (Kafka) then refuses the batch of a
			// member that lost the partition.
			w.mu.Lock()
			wm := backend.Offset{TopicPartition: w.tp, Offset: w.watermarkLocked()}
			w.mu.Unlock()
			if err := tx.PublishAndCommit(w.ctx, w.s, batch, wm); err != nil {
				return err
			}
			return eo.Confirm(w.ctx, m.ID)
		}
	}
	if w.retry(w.ctx, "publishing handler outputs of "+m.ID.String(), publish) != nil {
		return false
	}
	switch {
	case marker == nil:
		return true
	case c.cfg.exactlyOnce != nil:
		return w.catchUp(w.ctx) // the marker went with the batch
	}
	return w.writeOutcome(marker)
}
