// Package jetstream is the backend over NATS JetStream (nats.go's
// jetstream package), for users who outgrow one machine.
//
// Mapping: a topic of n partitions is n streams, FERRY_<topic>_<p>, each
// with the one subject ferry.<topic>.<p>; a stream's sequence is the
// partition's offset plus one, so offsets stay dense per partition. Keys
// map to partitions as everywhere in ferry (ferry.PartitionForKey).
// Message IDs go in Nats-Msg-Id, so the server's duplicate window
// (WithDuplicateWindow, default 2 minutes) drops a retried publish.
// Partition counts live in the KV bucket FERRY_topics. The backend
// implements backend.Admin: topics are listed from that bucket with their
// streams' limits, and JetStream has no compaction by key.
//
// Consumer groups: JetStream's durable consumers track acknowledgements
// per message, not a committed position per partition, and have no
// partition assignment, so ferry coordinates groups itself in the KV
// bucket FERRY_groups: each member heartbeats a key, every member computes
// the same assignment (backend.Assign), and each partition has an owner
// key holding its owner and committed offset. Ownership moves only by
// compare-and-set: the old owner releases after committing, or its
// heartbeat key is deleted once it went silent for the session timeout;
// a commit is a compare-and-set on the owner key, so a fenced member's
// commit fails with backend.ErrFenced.
//
// Durability, honestly: by default nats-server acknowledges a publish
// once it is written to the operating system, and fsyncs its file store
// every two minutes (sync_interval). A power loss can lose acknowledged
// messages. For fsync before ack, run the server with
// `jetstream { sync_interval: always }` (nats-server 2.10 or later; the
// embedded server option is Options.SyncAlways) and expect far lower
// throughput, or use replicas (WithReplicas) so that an acknowledged
// message is on several machines.
//
// JetStream has no transactions across streams and a KV bucket, so this
// backend is not backend.Transactional: exactly-once
// consume-transform-produce needs deterministic output IDs and the
// duplicate window instead.
package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// Backend is a backend.Backend over NATS JetStream.
type Backend struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	topics jetstream.KeyValue
	groups jetstream.KeyValue
	cfg    config

	mu         sync.Mutex
	partitions map[string]int // topic -> partition count
	pullers    backend.Pullers[*puller]
	closed     bool
}

var (
	_ backend.Backend = (*Backend)(nil)
	_ backend.Browser = (*Backend)(nil)
)

type config struct {
	prefix         string
	replicas       int
	storage        jetstream.StorageType
	dupWindow      time.Duration
	maxAge         time.Duration
	sessionTimeout time.Duration
}

// Option configures New.
type Option func(*config)

// WithPrefix sets the prefix of stream, subject and bucket names (default
// "FERRY"; subjects use it in lower case), so several ferry deployments
// can share a server.
func WithPrefix(p string) Option { return func(c *config) { c.prefix = p } }

// WithReplicas sets the replicas of new streams and buckets (default 1).
func WithReplicas(n int) Option { return func(c *config) { c.replicas = n } }

// WithMemoryStorage keeps new streams in memory instead of files.
func WithMemoryStorage() Option { return func(c *config) { c.storage = jetstream.MemoryStorage } }

// WithDuplicateWindow sets how long new streams remember message IDs
// (default 2 minutes): a publish retried within it is not stored twice.
func WithDuplicateWindow(d time.Duration) Option { return func(c *config) { c.dupWindow = d } }

// WithMaxAge sets the retention of new streams (default 0: unlimited).
func WithMaxAge(d time.Duration) Option { return func(c *config) { c.maxAge = d } }

// WithSessionTimeout sets how long a group member may stay silent before
// others take its partitions (default 10s).
func WithSessionTimeout(d time.Duration) Option { return func(c *config) { c.sessionTimeout = d } }

// New returns a backend on nc, creating the buckets it keeps topics and
// groups in. The caller keeps ownership of nc; connect with
// nats.MaxReconnects(-1) so the backend rides out server restarts.
func New(ctx context.Context, nc *nats.Conn, opts ...Option) (*Backend, error) {
	c := config{prefix: "FERRY", replicas: 1, storage: jetstream.FileStorage, dupWindow: 2 * time.Minute, sessionTimeout: 10 * time.Second}
	for _, o := range opts {
		o(&c)
	}
	if c.prefix == "" || strings.ContainsAny(c.prefix, ".*> \t") || c.replicas < 1 || c.sessionTimeout <= 0 {
		return nil, fmt.Errorf("jetstream: prefix %q (letters, digits, - and _), replicas %d (>= 1), session timeout %s (> 0): %w",
			c.prefix, c.replicas, c.sessionTimeout, ferry.ErrInvalidArgument)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	b := &Backend{nc: nc, js: js, cfg: c, partitions: map[string]int{}}
	if b.topics, err = b.bucket(ctx, c.prefix+"_topics"); err != nil {
		return nil, err
	}
	if b.groups, err = b.bucket(ctx, c.prefix+"_groups"); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Backend) bucket(ctx context.Context, name string) (jetstream.KeyValue, error) {
	kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 1, Storage: jetstream.FileStorage, Replicas: b.cfg.replicas})
	if err != nil {
		return nil, fmt.Errorf("jetstream: bucket %s: %w", name, err)
	}
	return kv, nil
}

// encode makes a name safe for streams, subjects and KV keys: letters,
// digits and '-' stay; every other byte becomes _XX (hex), so distinct
// names stay distinct.
func encode(s string) string {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(&sb, "_%02X", c)
		}
	}
	return sb.String()
}

// decode reverses encode.
func decode(s string) (string, bool) {
	var sb strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '_' {
			sb.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", false
		}
		sb.WriteByte(byte(v))
		i += 2
	}
	return sb.String(), true
}

func (b *Backend) stream(tp backend.TopicPartition) string {
	return fmt.Sprintf("%s_%s_%d", b.cfg.prefix, encode(tp.Topic), tp.Partition)
}

func (b *Backend) subject(tp backend.TopicPartition) string {
	return fmt.Sprintf("%s.%s.%d", strings.ToLower(b.cfg.prefix), encode(tp.Topic), tp.Partition)
}

// EnsureTopic implements backend.Backend: the partition count is recorded
// first (compare-and-set, so two callers agree), then the streams that do
// not exist made, with the backend's options; existing streams keep their
// config (retention a topic was created with by CreateTopic, say).
func (b *Backend) EnsureTopic(ctx context.Context, topic string, partitions int) error {
	if topic == "" || partitions < 1 || partitions > 4096 {
		return fmt.Errorf("jetstream: topic %q with %d partitions: want a name and 1 to 4096 partitions: %w", topic, partitions, ferry.ErrInvalidArgument)
	}
	_, err := b.topics.Create(ctx, encode(topic), []byte(strconv.Itoa(partitions)))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("jetstream: topic %q: %w", topic, err)
	}
	n, err := b.Partitions(ctx, topic)
	if err != nil {
		return err
	}
	return b.createStreams(ctx, topic, n, b.cfg.maxAge, 0, b.cfg.dupWindow)
}

// createStreams creates the streams of a topic's partitions that do not
// exist. A stream that exists is left as it is, whatever its config (a
// topic made by CreateTopic keeps its retention when EnsureTopic runs on
// it later).
func (b *Backend) createStreams(ctx context.Context, topic string, partitions int, maxAge time.Duration, maxBytes int64, dup time.Duration) error {
	if maxBytes <= 0 {
		maxBytes = -1
	}
	if maxAge > 0 && dup > maxAge {
		dup = maxAge // the server refuses a duplicate window longer than the retention
	}
	for p := range partitions {
		tp := backend.TopicPartition{Topic: topic, Partition: int32(p)}
		_, err := b.js.CreateStream(ctx, jetstream.StreamConfig{
			Name: b.stream(tp), Subjects: []string{b.subject(tp)}, Storage: b.cfg.storage, Replicas: b.cfg.replicas,
			Duplicates: dup, MaxAge: maxAge, MaxBytes: maxBytes, Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardOld,
		})
		if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("jetstream: stream %s: %w", b.stream(tp), err)
		}
	}
	return nil
}

// Partitions implements backend.Backend.
func (b *Backend) Partitions(ctx context.Context, topic string) (int, error) {
	b.mu.Lock()
	n, ok := b.partitions[topic]
	b.mu.Unlock()
	if ok {
		return n, nil
	}
	e, err := b.topics.Get(ctx, encode(topic))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, fmt.Errorf("jetstream: topic %q: %w", topic, ferry.ErrTopicNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("jetstream: topic %q: %w", topic, err)
	}
	n, err = strconv.Atoi(string(e.Value()))
	if err != nil || n < 1 {
		return 0, fmt.Errorf("jetstream: topic %q has a bad partition count %q: %w", topic, e.Value(), ferry.ErrCorrupt)
	}
	b.mu.Lock()
	b.partitions[topic] = n
	b.mu.Unlock()
	return n, nil
}

// Headers carrying the parts of a ferry message NATS has no field for.
const (
	hdrKey       = "Ferry-Key"
	hdrTime      = "Ferry-Time"
	hdrNotBefore = "Ferry-Not-Before"
	hdrHeaders   = "Ferry-Headers"
	hdrTombstone = "Ferry-Tombstone"
)

type wireHeader struct {
	K string `json:"k"`
	V []byte `json:"v"`
}

// Publish implements backend.Backend. Messages are published pipelined
// and each one's acknowledgement awaited; a message whose ID the server
// saw within its duplicate window is acknowledged with its first offset.
func (b *Backend) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	_, err := b.publish(ctx, msgs, nil)
	return err
}

// PublishDedup implements backend.DedupPublisher: the stream's duplicate
// window (WithDuplicateWindow) drops a message whose ID it holds, and its
// acknowledgement names the original's sequence.
func (b *Backend) PublishDedup(ctx context.Context, msgs ...*ferry.Message) ([]bool, error) {
	dup := make([]bool, len(msgs))
	return b.publish(ctx, msgs, dup)
}

// publish publishes msgs, noting in dup (if set) which were duplicates.
func (b *Backend) publish(ctx context.Context, msgs []*ferry.Message, dup []bool) ([]bool, error) {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		n, err := b.Partitions(ctx, m.Topic)
		if err != nil {
			return nil, err
		}
		if m.PinPartition {
			if m.Partition < 0 || int(m.Partition) >= n {
				return nil, fmt.Errorf("jetstream: topic %q has %d partitions, message pinned to %d: %w", m.Topic, n, m.Partition, ferry.ErrInvalidArgument)
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
		nm, err := b.toNATS(m)
		if err != nil {
			return nil, err
		}
		if futures[i], err = b.js.PublishMsgAsync(nm, jetstream.WithMsgID(m.ID.String())); err != nil {
			return nil, fmt.Errorf("jetstream: publish to %s: %w", nm.Subject, err)
		}
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			msgs[i].Offset = ack.Sequence - 1
			if dup != nil {
				dup[i] = ack.Duplicate
			}
		case err := <-f.Err():
			return nil, fmt.Errorf("jetstream: publish %s: %w", msgs[i].ID, err)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return dup, nil
}

func (b *Backend) toNATS(m *ferry.Message) (*nats.Msg, error) {
	nm := nats.NewMsg(b.subject(backend.TopicPartition{Topic: m.Topic, Partition: m.Partition}))
	nm.Data = m.Payload
	if m.Payload == nil {
		nm.Header.Set(hdrTombstone, "1")
	}
	if len(m.Key) > 0 {
		nm.Header.Set(hdrKey, base64Encode(m.Key))
	}
	nm.Header.Set(hdrTime, m.Time.UTC().Format(time.RFC3339Nano))
	if !m.NotBefore.IsZero() {
		nm.Header.Set(hdrNotBefore, m.NotBefore.UTC().Format(time.RFC3339Nano))
	}
	if len(m.Headers) > 0 {
		hs := make([]wireHeader, len(m.Headers))
		for i, h := range m.Headers {
			hs[i] = wireHeader{h.Key, h.Value}
		}
		j, err := json.Marshal(hs)
		if err != nil {
			return nil, err
		}
		nm.Header.Set(hdrHeaders, string(j))
	}
	return nm, nil
}

func fromNATS(tp backend.TopicPartition, nm jetstream.Msg) (*ferry.Message, error) {
	md, err := nm.Metadata()
	if err != nil {
		return nil, err
	}
	h := nm.Headers()
	m := &ferry.Message{Topic: tp.Topic, Partition: tp.Partition, Offset: md.Sequence.Stream - 1, Payload: nm.Data()}
	bad := func(what string, err error) error {
		return fmt.Errorf("jetstream: %s/%d@%d: %s: %v: %w", tp.Topic, tp.Partition, m.Offset, what, err, ferry.ErrCorrupt)
	}
	if m.ID, err = ferry.ParseID(h.Get(jetstream.MsgIDHeader)); err != nil {
		return nil, bad("message ID", err)
	}
	if k := h.Get(hdrKey); k != "" {
		if m.Key, err = base64Decode(k); err != nil {
			return nil, bad("key", err)
		}
	}
	if m.Time, err = time.Parse(time.RFC3339Nano, h.Get(hdrTime)); err != nil {
		m.Time = md.Timestamp
	}
	if nb := h.Get(hdrNotBefore); nb != "" {
		if m.NotBefore, err = time.Parse(time.RFC3339Nano, nb); err != nil {
			return nil, bad("not-before", err)
		}
	}
	if j := h.Get(hdrHeaders); j != "" {
		var hs []wireHeader
		if err := json.Unmarshal([]byte(j), &hs); err != nil {
			return nil, bad("headers", err)
		}
		for _, x := range hs {
			m.Headers = append(m.Headers, ferry.Header{Key: x.K, Value: x.V})
		}
	}
	if h.Get(hdrTombstone) == "1" {
		m.Payload = nil
	} else if m.Payload == nil {
		m.Payload = []byte{}
	}
	return m, nil
}

// Bounds implements backend.Backend.
func (b *Backend) Bounds(ctx context.Context, tp backend.TopicPartition) (uint64, uint64, error) {
	s, err := b.js.Stream(ctx, b.stream(tp))
	if err != nil {
		return 0, 0, b.streamErr(tp, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, 0, b.streamErr(tp, err)
	}
	st := info.State
	if st.Msgs == 0 {
		return st.LastSeq, st.LastSeq, nil
	}
	return st.FirstSeq - 1, st.LastSeq, nil
}

func (b *Backend) streamErr(tp backend.TopicPartition, err error) error {
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("jetstream: %s/%d: %w", tp.Topic, tp.Partition, ferry.ErrTopicNotFound)
	}
	return fmt.Errorf("jetstream: %s/%d: %w", tp.Topic, tp.Partition, err)
}

// OffsetForTime implements backend.Backend.
func (b *Backend) OffsetForTime(ctx context.Context, tp backend.TopicPartition, t time.Time) (uint64, error) {
	s, err := b.js.Stream(ctx, b.stream(tp))
	if err != nil {
		return 0, b.streamErr(tp, err)
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &t})
	if err != nil {
		return 0, b.streamErr(tp, err)
	}
	batch, err := c.FetchNoWait(1)
	if err != nil {
		return 0, b.streamErr(tp, err)
	}
	for m := range batch.Messages() {
		md, err := m.Metadata()
		if err != nil {
			return 0, err
		}
		return md.Sequence.Stream - 1, nil
	}
	_, end, err := b.Bounds(ctx, tp)
	return end, err
}

// Close stops the backend's consumers. It does not close the connection.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ferry.ErrClosed
	}
	b.closed = true
	b.pullers.Close() // the server deletes idle consumers
	return nil
}
