// Package kafka is the backend over Apache Kafka, with franz-go.
//
// Topics and partitions are Kafka's own; keys map to partitions with
// ferry.PartitionForKey (records are produced to an explicit partition),
// so a key lands where it would on every other ferry backend. The producer
// is franz-go's idempotent producer with acks from all in-sync replicas:
// its own retries never duplicate or reorder a partition. Kafka has no
// deduplication by message ID across producers or restarts, so a publish
// retried by the caller (an outbox relay after a crash, say) can be stored
// twice; consumers absorb that with idempotency (consumer.Idempotent, or
// the Postgres inbox).
//
// Consumer groups are Kafka's, with the cooperative-sticky balancer: a
// rebalance revokes only the partitions that move, and the revocation
// callback waits until the runtime has drained, committed and released
// each of them before the partition is given to its new owner. Offsets are
// committed at the runtime's watermark; a commit for a partition the
// member no longer owns, or from a stale generation, fails with
// backend.ErrFenced.
//
// Exactly-once consume-transform-produce uses Kafka transactions: each
// group member's client is a transactional producer (transactional ID
// "<prefix>.<group>.<member>", see WithTransactionalIDPrefix), and
// PublishAndCommit writes a handler's outputs, its exactly-once marker and
// the partition's offset in one transaction, which the group coordinator
// refuses if the member's generation is stale (KIP-447). Reads are
// read_committed: aborted outputs are never seen, and a new owner's
// offset fetch waits for a transaction in flight.
//
// The backend implements backend.Admin (see admin.go) with Kafka's admin
// requests: topics with their retention.ms, retention.bytes and
// cleanup.policy, groups with their committed offsets, members by client
// ID (a ferry member's name), and offset resets, which Kafka accepts only
// while the group has no members.
package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// Backend is a backend.Backend over Kafka.
type Backend struct {
	seeds []string
	cfg   config
	prod  *kgo.Client
	adm   *kadm.Client

	// afterTxnProduce, if set (by tests), runs inside every transaction
	// after its records are acknowledged and before it commits.
	afterTxnProduce func()

	// txnMu serializes producer-only transactions (PublishAndCommit
	// without a session) on txnProd, made on first use.
	txnMu   sync.Mutex
	txnProd *kgo.Client

	mu      sync.Mutex
	parts   map[string]int
	pullers backend.Pullers[*puller]
	closed  bool
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Browser = (*Backend)(nil)
)

var (
	_ backend.Transactional = (*Backend)(nil)
	_ backend.Retention     = (*Backend)(nil)
)

type config struct {
	replication    int16
	sessionTimeout time.Duration
	txnPrefix      string
	extra          []kgo.Opt
}

// Option configures New.
type Option func(*config)

// WithReplicationFactor sets the replication factor of topics EnsureTopic
// creates (default -1: the broker's default).
func WithReplicationFactor(n int16) Option { return func(c *config) { c.replication = n } }

// WithSessionTimeout sets the consumer-group session timeout (default
// 10s): a member silent for this long loses its partitions.
func WithSessionTimeout(d time.Duration) Option { return func(c *config) { c.sessionTimeout = d } }

// WithTransactionalIDPrefix sets the prefix of the transactional IDs group
// members use for exactly-once (default "ferry"). A member's ID is
// "<prefix>.<group>.<member>": a restarted member fences its previous
// incarnation's unfinished transactions, so member names must be unique
// within a group and stable across restarts.
func WithTransactionalIDPrefix(prefix string) Option { return func(c *config) { c.txnPrefix = prefix } }

// WithClientOptions adds franz-go options (TLS, SASL, timeouts) to every
// client the backend makes.
func WithClientOptions(opts ...kgo.Opt) Option {
	return func(c *config) { c.extra = append(c.extra, opts...) }
}

// New returns a backend on the brokers seeds.
func New(ctx context.Context, seeds []string, opts ...Option) (*Backend, error) {
	c := config{replication: -1, sessionTimeout: 10 * time.Second, txnPrefix: "ferry"}
	for _, o := range opts {
		o(&c)
	}
	if len(seeds) == 0 {
		return nil, fmt.Errorf("kafka: no seed brokers: %w", ferry.ErrInvalidArgument)
	}
	if c.sessionTimeout < 100*time.Millisecond || c.txnPrefix == "" {
		return nil, fmt.Errorf("kafka: session timeout %v (want at least 100ms), transactional ID prefix %q (want non-empty): %w", c.sessionTimeout, c.txnPrefix, ferry.ErrInvalidArgument)
	}
	prod, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(seeds...),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
	}, c.extra...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	b := &Backend{seeds: seeds, cfg: c, prod: prod, adm: kadm.NewClient(prod), parts: map[string]int{}}
	if err := prod.Ping(ctx); err != nil {
		prod.Close()
		return nil, fmt.Errorf("kafka: brokers %v unreachable: %w", seeds, err)
	}
	return b, nil
}

// EnsureTopic implements backend.Backend.
func (b *Backend) EnsureTopic(ctx context.Context, topic string, partitions int) error {
	return b.ensure(ctx, topic, partitions, nil)
}

// EnsureTopicRetention implements backend.Retention with the topic's
// retention.ms.
func (b *Backend) EnsureTopicRetention(ctx context.Context, topic string, partitions int, age time.Duration) error {
	if age <= 0 {
		return fmt.Errorf("kafka: topic %q retention %v: want a positive age: %w", topic, age, ferry.ErrInvalidArgument)
	}
	ms := fmt.Sprint(age.Milliseconds())
	return b.ensure(ctx, topic, partitions, map[string]*string{"retention.ms": &ms})
}

func (b *Backend) ensure(ctx context.Context, topic string, partitions int, configs map[string]*string) error {
	if topic == "" || partitions < 1 || partitions > 1<<20 {
		return fmt.Errorf("kafka: topic %q with %d partitions: want a name and at least 1 partition: %w", topic, partitions, ferry.ErrInvalidArgument)
	}
	resp, err := b.adm.CreateTopic(ctx, int32(partitions), b.cfg.replication, configs, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return fmt.Errorf("kafka: create topic %q: %w", topic, err)
	}
	return nil
}

// Partitions implements backend.Backend.
func (b *Backend) Partitions(ctx context.Context, topic string) (int, error) {
	b.mu.Lock()
	n, ok := b.parts[topic]
	b.mu.Unlock()
	if ok {
		return n, nil
	}
	tds, err := b.adm.ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("kafka: topic %q: %w", topic, err)
	}
	td, ok := tds[topic]
	if !ok || errors.Is(td.Err, kerr.UnknownTopicOrPartition) {
		return 0, fmt.Errorf("kafka: topic %q: %w", topic, ferry.ErrTopicNotFound)
	}
	if td.Err != nil {
		return 0, fmt.Errorf("kafka: topic %q: %w", topic, td.Err)
	}
	n = len(td.Partitions)
	b.mu.Lock()
	b.parts[topic] = n
	b.mu.Unlock()
	return n, nil
}

// Header names for the parts of a ferry message Kafka has no field for.
const (
	hdrID        = "ferry-id"
	hdrNotBefore = "ferry-not-before"
)

// Publish implements backend.Backend: the records are produced and their
// acknowledgements (from all in-sync replicas) awaited.
func (b *Backend) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	recs, err := b.records(ctx, msgs)
	if err != nil {
		return err
	}
	return produce(ctx, b.prod.Produce, msgs, recs)
}

// records validates msgs, fills in their partition, ID and time, and
// returns them as Kafka records.
func (b *Backend) records(ctx context.Context, msgs []*ferry.Message) ([]*kgo.Record, error) {
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		n, err := b.Partitions(ctx, m.Topic)
		if err != nil {
			return nil, err
		}
		if m.PinPartition {
			if m.Partition < 0 || int(m.Partition) >= n {
				return nil, fmt.Errorf("kafka: topic %q has %d partitions, message pinned to %d: %w", m.Topic, n, m.Partition, ferry.ErrInvalidArgument)
			}
		} else {
			m.Partition = ferry.PartitionForKey(m.Key, n)
		}
		if m.ID.IsZero() {
			m.ID = ferry.NewID()
		}
		if m.Time.IsZero() {
			m.Time = time.Now()
		}
		recs[i] = toRecord(m)
	}
	return recs, nil
}

// produce sends recs (the records of msgs) with send and waits for every
// acknowledgement, setting the messages' offsets.
func produce(ctx context.Context, send func(context.Context, *kgo.Record, func(*kgo.Record, error)), msgs []*ferry.Message, recs []*kgo.Record) error {
	// kgo keeps a record it has sent until the broker answers (failing
	// it could break the idempotent sequence), so a dead broker would
	// hold ProduceSync past ctx. Publish waits for ctx instead; a record
	// it gave up on may still be stored once the brokers return.
	type result struct {
		i   int
		err error
	}
	done := make(chan result, len(recs))
	for i, r := range recs {
		send(ctx, r, func(_ *kgo.Record, err error) { done <- result{i, err} })
	}
	var errs []error
	for range recs {
		select {
		case res := <-done:
			m := msgs[res.i]
			if res.err != nil {
				errs = append(errs, fmt.Errorf("kafka: publish %s to %s/%d: %w", m.ID, m.Topic, m.Partition, res.err))
				continue
			}
			m.Offset = uint64(recs[res.i].Offset)
		case <-ctx.Done():
			return fmt.Errorf("kafka: publish of %d messages: %w", len(msgs), ctx.Err())
		}
	}
	return errors.Join(errs...)
}

func toRecord(m *ferry.Message) *kgo.Record {
	r := &kgo.Record{Topic: m.Topic, Partition: m.Partition, Key: m.Key, Value: m.Payload, Timestamp: m.Time}
	r.Headers = append(r.Headers, kgo.RecordHeader{Key: hdrID, Value: []byte(m.ID.String())})
	if !m.NotBefore.IsZero() {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: hdrNotBefore, Value: []byte(m.NotBefore.UTC().Format(time.RFC3339Nano))})
	}
	for _, h := range m.Headers {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	return r
}

func fromRecord(r *kgo.Record) (*ferry.Message, error) {
	m := &ferry.Message{Topic: r.Topic, Partition: r.Partition, Offset: uint64(r.Offset), Key: r.Key, Payload: r.Value, Time: r.Timestamp}
	bad := func(what string, err error) error {
		return fmt.Errorf("kafka: %s/%d@%d: %s: %v: %w", r.Topic, r.Partition, r.Offset, what, err, ferry.ErrCorrupt)
	}
	for _, h := range r.Headers {
		var err error
		switch h.Key {
		case hdrID:
			m.ID, err = ferry.ParseID(string(h.Value))
		case hdrNotBefore:
			m.NotBefore, err = time.Parse(time.RFC3339Nano, string(h.Value))
		default:
			m.Headers = append(m.Headers, ferry.Header{Key: h.Key, Value: h.Value})
		}
		if err != nil {
			return nil, bad(h.Key, err)
		}
	}
	if m.ID.IsZero() {
		// Written by a producer that is not ferry: an ID derived from
		// the record's position stays the same on every read.
		m.ID = ferry.DeriveID("kafka-record", fmt.Sprintf("%s/%d", r.Topic, r.Partition), idOfOffset(r.Offset))
	}
	if len(m.Key) == 0 {
		m.Key = nil
	}
	return m, nil
}

func idOfOffset(off int64) ferry.ID {
	var id ferry.ID
	for i := range 8 {
		id[15-i] = byte(off >> (8 * i))
	}
	return id
}

// Bounds implements backend.Backend.
func (b *Backend) Bounds(ctx context.Context, tp backend.TopicPartition) (uint64, uint64, error) {
	start, err := b.listed(ctx, tp, b.adm.ListStartOffsets)
	if err != nil {
		return 0, 0, err
	}
	// The last stable offset: what a read_committed reader can reach.
	end, err := b.listed(ctx, tp, b.adm.ListCommittedOffsets)
	return start, end, err
}

// StableEnd implements backend.Transactional. The high watermark counts
// the records of open transactions; once the last stable offset reached
// it, every transaction that had written to the partition before the call
// has ended (committed or aborted), and what committed is readable. A
// transaction left open by a process that died holds it until the
// brokers' transaction timeout aborts it, as it holds every
// read_committed reader of the partition.
func (b *Backend) StableEnd(ctx context.Context, tp backend.TopicPartition) (uint64, error) {
	high, err := b.listed(ctx, tp, b.adm.ListEndOffsets)
	if err != nil {
		return 0, err
	}
	wait := 2 * time.Millisecond
	for {
		stable, err := b.listed(ctx, tp, b.adm.ListCommittedOffsets)
		if err != nil || stable >= high {
			return stable, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, fmt.Errorf("kafka: %s/%d: waiting for transactions open below offset %d (stable up to %d): %w", tp.Topic, tp.Partition, high, stable, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}

func (b *Backend) listed(ctx context.Context, tp backend.TopicPartition, list func(context.Context, ...string) (kadm.ListedOffsets, error)) (uint64, error) {
	los, err := list(ctx, tp.Topic)
	if err != nil {
		return 0, fmt.Errorf("kafka: offsets of %s/%d: %w", tp.Topic, tp.Partition, err)
	}
	lo, ok := los.Lookup(tp.Topic, tp.Partition)
	if !ok || errors.Is(lo.Err, kerr.UnknownTopicOrPartition) {
		return 0, fmt.Errorf("kafka: %s/%d: %w", tp.Topic, tp.Partition, ferry.ErrTopicNotFound)
	}
	if lo.Err != nil {
		return 0, fmt.Errorf("kafka: offsets of %s/%d: %w", tp.Topic, tp.Partition, lo.Err)
	}
	return uint64(max(lo.Offset, 0)), nil
}

// OffsetForTime implements backend.Backend.
func (b *Backend) OffsetForTime(ctx context.Context, tp backend.TopicPartition, t time.Time) (uint64, error) {
	return b.listed(ctx, tp, func(ctx context.Context, topics ...string) (kadm.ListedOffsets, error) {
		return b.adm.ListOffsetsAfterMilli(ctx, t.UnixMilli(), topics...)
	})
}

// Committed implements backend.Backend.
func (b *Backend) Committed(ctx context.Context, group string, tp backend.TopicPartition) (uint64, bool, error) {
	// RequireStable: while a transaction that commits this group's
	// offsets is in flight, the fetch waits for its outcome.
	resps, err := b.adm.FetchOffsets(kadm.RequireStable(ctx), group)
	if errors.Is(err, kerr.GroupIDNotFound) {
		return 0, false, nil // a group that never committed (or was deleted)
	}
	if err != nil {
		return 0, false, fmt.Errorf("kafka: committed offsets of %s: %w", group, err)
	}
	r, ok := resps.Lookup(tp.Topic, tp.Partition)
	if !ok || r.At < 0 {
		return 0, false, nil
	}
	if r.Err != nil {
		return 0, false, fmt.Errorf("kafka: committed offset of %s on %s/%d: %w", group, tp.Topic, tp.Partition, r.Err)
	}
	return uint64(r.At), true, nil
}

// Close closes the backend's clients.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ferry.ErrClosed
	}
	b.closed = true
	b.mu.Unlock()
	b.pullers.Close()
	b.prod.Close()
	b.txnMu.Lock()
	if b.txnProd != nil {
		b.txnProd.Close()
	}
	b.txnMu.Unlock()
	return nil
}

// puller reads one partition for one caller at a time (see
// backend.Pullers), with a client of its own positioned where its caller
// reads.
type puller struct {
	cl     *kgo.Client
	next   uint64           // where the runtime reads next
	held   []*ferry.Message // polled, not returned yet (not due, or over max)
	polled uint64           // one past the last record polled, control records included
}

func (p *puller) close() {
	if p.cl != nil {
		p.cl.Close()
	}
	p.cl, p.held = nil, nil
}

// Position implements backend.Puller.
func (p *puller) Position() uint64 { return p.next }

// Close implements backend.Puller.
func (p *puller) Close() { p.close() }

// Fetch implements backend.Backend.
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
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return backend.Fetched{Next: offset}, ferry.ErrClosed
	}
	p, ok := b.pullers.Take(tp, offset)
	if !ok {
		p = &puller{}
	}
	defer b.pullers.Put(tp, p)
	if p.cl == nil || offset != p.next {
		p.close()
		cl, err := kgo.NewClient(append([]kgo.Opt{
			kgo.SeedBrokers(b.seeds...),
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{tp.Topic: {tp.Partition: kgo.NewOffset().At(int64(offset))}}),
			kgo.FetchMaxWait(500 * time.Millisecond),
			// Outputs of aborted transactions are never seen; commit and
			// abort markers are kept so the position can move past a
			// partition's last marker (see below).
			kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.KeepControlRecords(),
		}, b.cfg.extra...)...)
		if err != nil {
			return backend.Fetched{Next: offset}, fmt.Errorf("kafka: fetch %s/%d: %w", tp.Topic, tp.Partition, err)
		}
		p.cl, p.next, p.polled = cl, offset, offset
	}
	for {
		if len(p.held) == 0 {
			fs := p.cl.PollRecords(ctx, max)
			if err := ctx.Err(); err != nil {
				// The client may have polled records it will not give
				// again: it is past the position this puller claims.
				p.close()
				return backend.Fetched{Next: offset}, err
			}
			var ferr error
			fs.EachError(func(_ string, _ int32, err error) { ferr = err })
			if ferr != nil {
				p.close()
				return backend.Fetched{Next: offset}, fmt.Errorf("kafka: fetch %s/%d: %w", tp.Topic, tp.Partition, ferr)
			}
			for _, r := range fs.Records() {
				p.polled = uint64(r.Offset) + 1
				if r.Attrs.IsControl() {
					continue
				}
				m, err := fromRecord(r)
				if err != nil {
					p.close()
					return backend.Fetched{Next: offset}, err
				}
				p.held = append(p.held, m)
			}
		}
		if out := backend.TakeDue(&p.held, max, now()); len(out) > 0 {
			p.next = out[len(out)-1].Offset + 1
			if len(p.held) == 0 {
				p.next = p.polled
			}
			return backend.Fetched{Messages: out, Next: p.next}, nil
		}
		if len(p.held) == 0 && p.polled > p.next {
			// Only transaction markers (or aborted records): nothing to
			// return, but the position moves past them, so a reader that
			// stops at the partition's end does not wait for more.
			p.next = p.polled
			return backend.Fetched{Next: p.next}, nil
		}
		if len(p.held) > 0 {
			if err := backend.WaitDue(ctx, p.held); err != nil {
				return backend.Fetched{Next: offset}, err
			}
		}
	}
}
