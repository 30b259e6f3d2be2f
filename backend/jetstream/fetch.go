package jetstream

import (
	"context"
	"encoding/base64"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

func base64Encode(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func base64Decode(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

// puller reads one partition for one caller at a time (see
// backend.Pullers): an ordered consumer (which rebuilds itself after a
// server restart) positioned where its caller reads, and the messages it
// delivered that were not returned yet (beyond max, or not due before
// their NotBefore).
type puller struct {
	cons jetstream.Consumer
	next uint64 // the offset the caller reads next
	held []*ferry.Message
}

// Position implements backend.Puller.
func (p *puller) Position() uint64 { return p.next }

// Close implements backend.Puller: the server deletes the ordered
// consumer once it is idle.
func (p *puller) Close() { p.drop() }

// Fetch implements backend.Backend. Messages with a NotBefore in the
// future are held back, and so is everything after them in the
// partition, as in the embedded log.
func (b *Backend) Fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	return b.fetch(ctx, tp, offset, max, time.Now)
}

// Browse implements backend.Browser: Fetch with every message due.
func (b *Backend) Browse(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	return b.fetch(ctx, tp, offset, max, backend.AllDue)
}

// fetch is Fetch, with now deciding which delayed messages are due.
func (b *Backend) fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int, now func() time.Time) (backend.Fetched, error) {
	if max <= 0 {
		max = 500
	}
	p, ok := b.pullers.Take(tp, offset)
	if !ok {
		p = &puller{}
	}
	defer b.pullers.Put(tp, p)
	if p.cons == nil || offset != p.next {
		if err := b.position(ctx, p, tp, offset); err != nil {
			return backend.Fetched{Next: offset}, err
		}
	}
	for {
		if len(p.held) == 0 {
			if err := b.pull(ctx, p, tp, max); err != nil {
				p.drop()
				return backend.Fetched{Next: offset}, err
			}
		}
		if out := backend.TakeDue(&p.held, max, now()); len(out) > 0 {
			p.next = out[len(out)-1].Offset + 1
			return backend.Fetched{Messages: out, Next: p.next}, nil
		}
		if len(p.held) > 0 || ctx.Err() != nil {
			if err := backend.WaitDue(ctx, p.held); err != nil {
				return backend.Fetched{Next: offset}, err
			}
		}
	}
}

func (b *Backend) position(ctx context.Context, p *puller, tp backend.TopicPartition, offset uint64) error {
	p.drop()
	s, err := b.js.Stream(ctx, b.stream(tp))
	if err != nil {
		return b.streamErr(tp, err)
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: offset + 1, InactiveThreshold: time.Minute,
	})
	if err != nil {
		return b.streamErr(tp, err)
	}
	p.cons, p.next = c, offset
	return nil
}

// pull takes what is there, or else waits up to a second (or until ctx
// ends) for the first message. (A fetch of max messages would wait for
// all max or the timeout, adding a second of latency to a quiet topic.)
func (b *Backend) pull(ctx context.Context, p *puller, tp backend.TopicPartition, max int) error {
	batch, err := p.cons.FetchNoWait(max)
	if err == nil {
		err = b.collect(ctx, p, tp, batch)
	}
	if err != nil || len(p.held) > 0 {
		return err
	}
	fctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	batch, err = p.cons.Fetch(1, jetstream.FetchContext(fctx))
	if err == nil {
		err = b.collect(ctx, p, tp, batch)
	}
	return err
}

func (b *Backend) collect(ctx context.Context, p *puller, tp backend.TopicPartition, batch jetstream.MessageBatch) error {
	for nm := range batch.Messages() {
		m, err := fromNATS(tp, nm)
		if err != nil {
			return err
		}
		p.held = append(p.held, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return b.streamErr(tp, err)
	}
	return ctx.Err()
}

// drop forgets the consumer; the server deletes it once inactive.
func (p *puller) drop() {
	p.cons, p.held = nil, nil
}
