package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/dlq"
)

// Errors callers branch on (errors.Is). The API maps each to a status and
// a code, and Client maps them back.
var (
	// ErrUnsupported: the backend cannot do this (listing topics on a
	// backend without backend.Admin, compaction on JetStream).
	ErrUnsupported = errors.New("admin: not supported by this backend")
	// ErrGroupActive: a group reset while the group has live members.
	ErrGroupActive = errors.New("admin: consumer group has live members")
	// ErrProtected: an operation the audit topic refuses (writes,
	// purges, replays into it, deletion, resets).
	ErrProtected = errors.New("admin: the audit topic is written only by the audit log")
	// ErrUnauthenticated: no credentials, or wrong ones.
	ErrUnauthenticated = errors.New("admin: unauthenticated")
	// ErrTooManyAttempts: too many tokens that matched none were tried
	// lately (each costs a bcrypt comparison with every token of the
	// access file); wait a second. It comes with ErrUnauthenticated.
	ErrTooManyAttempts = fmt.Errorf("admin: too many failed authentications, try again in a second: %w", ErrUnauthenticated)
	// ErrForbidden: the caller's roles do not grant the verb.
	ErrForbidden = errors.New("admin: forbidden")
	// ErrNoDLQ: the DLQ topic does not exist (yet): nothing was
	// dead-lettered. It comes with ferry.ErrTopicNotFound.
	ErrNoDLQ = errors.New("admin: no such DLQ topic")
	// ErrUnsupportedMedia: a request body that is not application/json.
	// It comes with ferry.ErrInvalidArgument.
	ErrUnsupportedMedia = fmt.Errorf("admin: unsupported media type: %w", ferry.ErrInvalidArgument)
	// ErrNotFound: no such message, entry or group.
	ErrNotFound = errors.New("admin: not found")
	// ErrMethodNotAllowed: the path exists, but not with that method.
	ErrMethodNotAllowed = errors.New("admin: method not allowed")
)

// DefaultAuditTopic is the topic the audit log is kept in.
const DefaultAuditTopic = "ferry.audit"

// Bounds of one request, so that no request reads without end.
const (
	// DefaultLimit is how many messages or entries a page holds unless
	// the request says.
	DefaultLimit = 100
	// MaxLimit bounds a page.
	MaxLimit = 10000
	// DefaultScan is how many messages a search reads unless it says.
	DefaultScan = 100000
	// MaxScan bounds a search.
	MaxScan = 10_000_000
	// MaxProduce bounds the messages of one produce request.
	MaxProduce = 10000
)

// API is what an operator can do: Service does it over a backend, Client
// over HTTP through a Handler. The ferry command line is written against
// it, so a command behaves the same on every backend and remotely.
type API interface {
	Health(ctx context.Context) (Health, error)
	Topics(ctx context.Context) ([]Topic, error)
	Topic(ctx context.Context, name string) (Topic, error)
	CreateTopic(ctx context.Context, t CreateTopic) (Topic, error)
	DeleteTopic(ctx context.Context, name string) error
	// AlterTopic changes a topic's retention.
	AlterTopic(ctx context.Context, name string, a AlterTopic) (Topic, error)
	// Messages returns up to limit messages of a partition from start
	// (ParseStart's forms).
	Messages(ctx context.Context, topic string, partition int32, start string, limit int) (MessagePage, error)
	// Message returns the message at an offset.
	Message(ctx context.Context, topic string, partition int32, offset uint64) (Message, error)
	// Search scans a topic for messages with a key or a header.
	Search(ctx context.Context, topic string, q Search) (SearchResult, error)
	// Tail calls fn with the messages of one partition of the topic, or
	// of all of them when partition is negative, from start on, as they
	// arrive, until ctx ends or fn returns an error. Each partition's
	// messages come in offset order.
	Tail(ctx context.Context, topic string, partition int32, start string, fn func(Message) error) error
	Produce(ctx context.Context, topic string, msgs []Message) ([]Produced, error)
	Groups(ctx context.Context) ([]GroupSummary, error)
	Group(ctx context.Context, name string) (Group, error)
	ResetGroup(ctx context.Context, group string, r Reset) ([]ResetOffset, error)
	// DeleteGroup deletes a group's committed offsets; refused while it
	// has live members unless force.
	DeleteGroup(ctx context.Context, group string, force bool) error
	// DLQs lists the dead-letter queues with their unresolved entries
	// counted.
	DLQs(ctx context.Context) ([]DLQSummary, error)
	// DeadLetters lists a page of the entries of the DLQ topic queue that
	// match f, in dead-letter order.
	DeadLetters(ctx context.Context, queue string, f Filter, page Page) ([]DeadLetter, error)
	// DeadLetter returns the entry of an original message ID.
	DeadLetter(ctx context.Context, queue, id string) (DeadLetter, error)
	// Redrive brings entries back (see dlq.Queue.Redrive); progress, if
	// set, is called as it goes.
	Redrive(ctx context.Context, queue string, r Redrive, progress func(Progress)) (RedriveResult, error)
	Purge(ctx context.Context, queue string, p Purge) (PurgeResult, error)
	Replay(ctx context.Context, r Replay) (ReplayResult, error)
	// AuditLog lists audit records, newest last.
	AuditLog(ctx context.Context, q AuditQuery) ([]AuditRecord, error)
}

var _ API = (*Service)(nil)

// Service performs the operator's operations over a backend.
type Service struct {
	b     backend.Backend
	adm   backend.Admin // nil if the backend has none
	name  string
	reg   *Registry
	audit string
	now   func() time.Time
	log   *slog.Logger
	lag   *lagHistory
}

// Opt configures a Service.
type Opt interface{ apply(*Service) }

type optFunc func(*Service)

func (f optFunc) apply(s *Service) { f(s) }

// WithRegistry shows the live state of the consumers reg holds (the
// process's own), and counts them in Health.
func WithRegistry(reg *Registry) Opt { return optFunc(func(s *Service) { s.reg = reg }) }

// WithAuditTopic keeps the audit log in topic (default DefaultAuditTopic).
func WithAuditTopic(topic string) Opt { return optFunc(func(s *Service) { s.audit = topic }) }

// WithClock replaces time.Now: what "1h ago" counts from, and audit times.
func WithClock(now func() time.Time) Opt { return optFunc(func(s *Service) { s.now = now }) }

// WithLogger logs what the API cannot report to its caller (an audit
// record that could not be written) to l (default slog.Default()).
func WithLogger(l *slog.Logger) Opt { return optFunc(func(s *Service) { s.log = l }) }

// WithBackendName names the backend in Health ("embedded", "jetstream",
// "kafka"; default: its Go type).
func WithBackendName(name string) Opt { return optFunc(func(s *Service) { s.name = name }) }

// NewService returns a Service over b. It does not own b: closing b is
// the caller's.
func NewService(b backend.Backend, opts ...Opt) *Service {
	s := &Service{b: b, audit: DefaultAuditTopic, now: time.Now, name: fmt.Sprintf("%T", b), log: slog.Default(),
		lag: &lagHistory{groups: map[string]*lagRing{}}}
	s.adm, _ = b.(backend.Admin)
	for _, o := range opts {
		o.apply(s)
	}
	return s
}

// AuditTopic returns the topic the audit log is kept in.
func (s *Service) AuditTopic() string { return s.audit }

// admin returns the backend's Admin, or ErrUnsupported naming what for.
func (s *Service) admin(what string) (backend.Admin, error) {
	if s.adm == nil {
		return nil, fmt.Errorf("%s on %s: %w", what, s.name, ErrUnsupported)
	}
	return s.adm, nil
}

// protectDLQ refuses writes of messages into a dead-letter topic (one
// named GROUP.dlq, or a registered consumer's): a record there with a
// dead letter's headers would be an entry its group's owner handles, so
// writing one would inject work into the group without the right to
// produce to its source. Dead-letter topics are written by their
// consumers, and through redrive and purge.
func (s *Service) protectDLQ(what, topic string) error {
	if _, ok := s.reg.dlqGroup(topic); ok {
		return fmt.Errorf("%s %s: a dead-letter topic is written by its consumers, and through redrive and purge: %w", what, topic, ErrProtected)
	}
	return nil
}

// protect refuses topic if it is the audit topic.
func (s *Service) protect(what, topic string) error {
	if topic == s.audit {
		return fmt.Errorf("%s %s: %w", what, topic, ErrProtected)
	}
	return nil
}

// Health implements API.
func (s *Service) Health(ctx context.Context) (Health, error) {
	h := Health{Status: "ok", Backend: s.name, Problems: []string{}}
	if hc, ok := s.b.(backend.HealthChecker); ok {
		if err := hc.Healthy(); err != nil {
			h.Problems = append(h.Problems, "backend: "+err.Error())
		}
	}
	if s.adm != nil {
		if _, err := s.adm.Topics(ctx); err != nil {
			h.Problems = append(h.Problems, "backend: "+err.Error())
		}
	}
	for _, c := range s.reg.list() {
		h.Consumers++
		if err := c.Healthy(); err != nil {
			h.Problems = append(h.Problems, fmt.Sprintf("consumer %s/%s: %v", c.Group(), c.Member(), err))
		}
	}
	if len(h.Problems) > 0 {
		h.Status = "degraded"
	}
	return h, nil
}

// Topics implements API.
func (s *Service) Topics(ctx context.Context) ([]Topic, error) {
	adm, err := s.admin("listing topics")
	if err != nil {
		return nil, err
	}
	infos, err := adm.Topics(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Topic, 0, len(infos))
	for _, ti := range infos {
		t, err := s.describe(ctx, ti)
		if err != nil {
			return nil, err
		}
		t.Bounds = nil
		out = append(out, t)
	}
	return out, nil
}

// describe renders ti with its partitions' bounds.
func (s *Service) describe(ctx context.Context, ti backend.TopicInfo) (Topic, error) {
	t := Topic{Name: ti.Name, Partitions: ti.Partitions, Bytes: ti.Bytes, RetentionBytes: ti.RetentionBytes, Compact: ti.Compact,
		Bounds: []PartitionBounds{}}
	if ti.RetentionAge > 0 {
		t.Retention = ti.RetentionAge.String()
	}
	switch {
	case ti.DedupWindow < 0:
		t.DedupWindow = "none"
	case ti.DedupWindow > 0:
		t.DedupWindow = ti.DedupWindow.String()
	}
	for p := range ti.Partitions {
		start, end, err := s.b.Bounds(ctx, backend.TopicPartition{Topic: ti.Name, Partition: int32(p)})
		if err != nil {
			return t, err
		}
		t.Bounds = append(t.Bounds, PartitionBounds{Partition: int32(p), Start: start, End: end})
		t.Messages += end - start
	}
	return t, nil
}

// Topic implements API.
func (s *Service) Topic(ctx context.Context, name string) (Topic, error) {
	if s.adm == nil {
		// Every backend knows partitions and bounds.
		n, err := s.b.Partitions(ctx, name)
		if err != nil {
			return Topic{}, err
		}
		return s.describe(ctx, backend.TopicInfo{Name: name, Partitions: n, Bytes: -1})
	}
	ti, err := s.topicInfo(ctx, s.adm, name)
	if err != nil {
		return Topic{}, err
	}
	return s.describe(ctx, ti)
}

// topicInfo returns what adm knows of a topic.
func (s *Service) topicInfo(ctx context.Context, adm backend.Admin, name string) (backend.TopicInfo, error) {
	infos, err := adm.Topics(ctx)
	if err != nil {
		return backend.TopicInfo{}, err
	}
	for _, ti := range infos {
		if ti.Name == name {
			return ti, nil
		}
	}
	return backend.TopicInfo{}, fmt.Errorf("topic %q: %w", name, ferry.ErrTopicNotFound)
}

// CreateTopic implements API.
func (s *Service) CreateTopic(ctx context.Context, c CreateTopic) (Topic, error) {
	if err := s.protect("creating", c.Name); err != nil {
		return Topic{}, err
	}
	if c.Name == "" {
		return Topic{}, fmt.Errorf("topic name: empty: %w", ferry.ErrInvalidArgument)
	}
	if c.Partitions < 1 || c.Partitions > 4096 {
		return Topic{}, fmt.Errorf("topic %s: %d partitions: want 1 to 4096: %w", c.Name, c.Partitions, ferry.ErrInvalidArgument)
	}
	ti := backend.TopicInfo{Name: c.Name, Partitions: c.Partitions, RetentionBytes: c.RetentionBytes, Compact: c.Compact}
	if c.Retention != "" {
		d, err := time.ParseDuration(c.Retention)
		if err != nil || d <= 0 {
			return Topic{}, fmt.Errorf("topic %s: retention %q: want a positive Go duration (72h): %w", c.Name, c.Retention, ferry.ErrInvalidArgument)
		}
		ti.RetentionAge = d
	}
	if c.RetentionBytes < 0 {
		return Topic{}, fmt.Errorf("topic %s: retention_bytes %d: want 0 (unbounded) or more: %w", c.Name, c.RetentionBytes, ferry.ErrInvalidArgument)
	}
	adm, err := s.admin("creating topics")
	if err != nil {
		return Topic{}, err
	}
	if err := adm.CreateTopic(ctx, ti); err != nil {
		return Topic{}, err
	}
	return s.Topic(ctx, c.Name)
}

// AlterTopic implements API.
func (s *Service) AlterTopic(ctx context.Context, name string, a AlterTopic) (Topic, error) {
	if err := s.protect("altering", name); err != nil {
		return Topic{}, err
	}
	if a.Retention == nil && a.RetentionBytes == nil {
		return Topic{}, fmt.Errorf("alter topic %s: name retention or retention_bytes (partitions, compaction and dedup are fixed at creation): %w", name, ferry.ErrInvalidArgument)
	}
	alt, ok := s.b.(backend.TopicAlterer)
	if !ok {
		return Topic{}, fmt.Errorf("altering topics on %s: %w", s.name, ErrUnsupported)
	}
	adm, err := s.admin("altering topics") // the retention not named stays as it is
	if err != nil {
		return Topic{}, err
	}
	ti, err := s.topicInfo(ctx, adm, name)
	if err != nil {
		return Topic{}, err
	}
	if a.Retention != nil {
		d, err := time.ParseDuration(*a.Retention)
		if err != nil || d < 0 {
			return Topic{}, fmt.Errorf("alter topic %s: retention %q: want a Go duration (72h), 0 to keep messages forever: %w", name, *a.Retention, ferry.ErrInvalidArgument)
		}
		ti.RetentionAge = d
	}
	if a.RetentionBytes != nil {
		if *a.RetentionBytes < 0 {
			return Topic{}, fmt.Errorf("alter topic %s: retention_bytes %d: want 0 (unbounded) or more: %w", name, *a.RetentionBytes, ferry.ErrInvalidArgument)
		}
		ti.RetentionBytes = *a.RetentionBytes
	}
	if err := alt.AlterTopic(ctx, ti); err != nil {
		return Topic{}, err
	}
	return s.Topic(ctx, name)
}

// DeleteTopic implements API.
func (s *Service) DeleteTopic(ctx context.Context, name string) error {
	if err := s.protect("deleting", name); err != nil {
		return err
	}
	adm, err := s.admin("deleting topics")
	if err != nil {
		return err
	}
	return adm.DeleteTopic(ctx, name)
}

// partition checks that topic has partition p.
func (s *Service) partition(ctx context.Context, topic string, p int32) error {
	n, err := s.b.Partitions(ctx, topic)
	if err != nil {
		return err
	}
	return checkPartition(topic, p, n)
}

// checkPartition checks that p is one of a topic's n partitions.
func checkPartition(topic string, p int32, n int) error {
	if p < 0 || int(p) >= n {
		return fmt.Errorf("partition %d of %s: it has partitions 0 to %d: %w", p, topic, n-1, ferry.ErrInvalidArgument)
	}
	return nil
}

// limit checks a page size (0: DefaultLimit).
func limit(n int) (int, error) {
	switch {
	case n == 0:
		return DefaultLimit, nil
	case n < 0 || n > MaxLimit:
		return 0, fmt.Errorf("limit %d: want 1 to %d (0: %d): %w", n, MaxLimit, DefaultLimit, ferry.ErrInvalidArgument)
	}
	return n, nil
}

// Messages implements API.
func (s *Service) Messages(ctx context.Context, topic string, partition int32, start string, n int) (MessagePage, error) {
	page := MessagePage{Messages: []Message{}}
	n, err := limit(n)
	if err != nil {
		return page, err
	}
	st, err := ParseStart(start, s.now())
	if err != nil {
		return page, err
	}
	if err := s.partition(ctx, topic, partition); err != nil {
		return page, err
	}
	tp := backend.TopicPartition{Topic: topic, Partition: partition}
	off, err := st.Resolve(ctx, s.b, tp)
	if err != nil {
		return page, err
	}
	first, end, err := s.b.Bounds(ctx, tp)
	if err != nil {
		return page, err
	}
	if off > end {
		return page, fmt.Errorf("offset %d of %s/%d: the partition ends at %d: %w", off, topic, partition, end, ferry.ErrOffsetOutOfRange)
	}
	page.Next, page.End = max(off, first), end
	err = s.scan(ctx, tp, page.Next, func(m *ferry.Message, _ uint64) bool {
		page.Messages = append(page.Messages, NewMessage(m))
		page.Next = m.Offset + 1
		return len(page.Messages) < n
	})
	if errors.Is(err, errNotDue) {
		err = nil // the page ends there; Next names the delayed message
	}
	return page, err
}

// errNotDue: a scan reached a message whose delivery is delayed: the
// backend serves nothing from it on until it is due.
var errNotDue = errors.New("a message delayed until later: nothing is readable from it on until it is due")

// notDueWait is how long a scan's fetch, on a backend that cannot browse
// (backend.Browser), waits before taking its silence for a message not
// due yet (below the partition's end a fetch otherwise answers at once).
const notDueWait = time.Second

// scan calls fn with tp's messages from off to the end the partition had
// when scan began (fn also gets that end), until fn returns false.
func (s *Service) scan(ctx context.Context, tp backend.TopicPartition, off uint64, fn func(*ferry.Message, uint64) bool) error {
	start, end, err := s.b.Bounds(ctx, tp)
	if err != nil {
		return err
	}
	off = max(off, start) // removed by retention: the first retained
	browser, _ := s.b.(backend.Browser)
	for off < end {
		var f backend.Fetched
		if browser != nil {
			// Delayed messages included: an operator sees them.
			f, err = browser.Browse(ctx, tp, off, 500)
		} else {
			// Fetch waits for a delayed message to be due; a scan must not.
			fctx, cancel := context.WithTimeout(ctx, notDueWait)
			f, err = s.b.Fetch(fctx, tp, off, 500)
			cancel()
			if err != nil && ctx.Err() == nil && fctx.Err() != nil {
				return fmt.Errorf("%s/%d at offset %d: %w", tp.Topic, tp.Partition, off, errNotDue)
			}
		}
		if errors.Is(err, ferry.ErrOffsetOutOfRange) {
			// Retention moved the start under us.
			if start, _, err = s.b.Bounds(ctx, tp); err != nil {
				return err
			}
			if start > off {
				off = start
				continue
			}
		}
		if err != nil {
			return err
		}
		for _, m := range f.Messages {
			if m.Offset >= end {
				return nil
			}
			if !fn(m, end) {
				return nil
			}
		}
		if f.Next <= off {
			return nil
		}
		off = f.Next
	}
	return nil
}

// Message implements API.
func (s *Service) Message(ctx context.Context, topic string, partition int32, offset uint64) (Message, error) {
	if err := s.partition(ctx, topic, partition); err != nil {
		return Message{}, err
	}
	tp := backend.TopicPartition{Topic: topic, Partition: partition}
	start, end, err := s.b.Bounds(ctx, tp)
	if err != nil {
		return Message{}, err
	}
	if offset < start || offset >= end {
		return Message{}, fmt.Errorf("offset %d of %s/%d: the partition holds %d to %d: %w", offset, topic, partition, start, end, ferry.ErrOffsetOutOfRange)
	}
	var out *ferry.Message
	err = s.scan(ctx, tp, offset, func(m *ferry.Message, _ uint64) bool {
		if m.Offset == offset {
			out = m
		}
		return false
	})
	if err != nil {
		return Message{}, err
	}
	if out == nil {
		// Compaction or a transaction marker left a gap here.
		return Message{}, fmt.Errorf("offset %d of %s/%d: no message there (compacted away, or a control record): %w", offset, topic, partition, ErrNotFound)
	}
	return NewMessage(out), nil
}

// Search implements API.
func (s *Service) Search(ctx context.Context, topic string, q Search) (SearchResult, error) {
	res := SearchResult{Messages: []Message{}}
	if q.Key == nil && q.Header == "" {
		return res, fmt.Errorf("search: give a key or a header to look for: %w", ferry.ErrInvalidArgument)
	}
	n, err := limit(q.Limit)
	if err != nil {
		return res, err
	}
	scan := q.Scan
	switch {
	case scan == 0:
		scan = DefaultScan
	case scan < 0 || scan > MaxScan:
		return res, fmt.Errorf("search scan %d: want 1 to %d (0: %d): %w", scan, MaxScan, DefaultScan, ferry.ErrInvalidArgument)
	}
	name, value, byValue := strings.Cut(q.Header, "=")
	st, err := ParseStart(q.Start, s.now())
	if err != nil {
		return res, err
	}
	parts, err := s.b.Partitions(ctx, topic)
	if err != nil {
		return res, err
	}
	for p := range parts {
		tp := backend.TopicPartition{Topic: topic, Partition: int32(p)}
		off, err := st.Resolve(ctx, s.b, tp)
		if err != nil {
			return res, err
		}
		err = s.scan(ctx, tp, off, func(m *ferry.Message, _ uint64) bool {
			if res.Scanned >= scan {
				res.Truncated = true
				return false
			}
			res.Scanned++
			match := q.Key == nil || string(m.Key) == *q.Key
			if match && q.Header != "" {
				match = slices.ContainsFunc(m.Headers, func(h ferry.Header) bool {
					return h.Key == name && (!byValue || string(h.Value) == value)
				})
			}
			if match {
				res.Messages = append(res.Messages, NewMessage(m))
				if len(res.Messages) >= n {
					res.Truncated = true
					return false
				}
			}
			return true
		})
		if errors.Is(err, errNotDue) {
			res.Truncated, err = true, nil // the rest of the partition is not due yet
		}
		if err != nil || res.Scanned >= scan || len(res.Messages) >= n {
			return res, err
		}
	}
	return res, nil
}

// Tail implements API.
func (s *Service) Tail(ctx context.Context, topic string, partition int32, start string, fn func(Message) error) error {
	st, err := ParseStart(start, s.now())
	if err != nil {
		return err
	}
	parts, err := s.b.Partitions(ctx, topic)
	if err != nil {
		return err
	}
	first, last := int32(0), int32(parts-1)
	if partition >= 0 {
		if err := s.partition(ctx, topic, partition); err != nil {
			return err
		}
		first, last = partition, partition
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	msgs := make(chan *ferry.Message)
	for p := first; p <= last; p++ {
		tp := backend.TopicPartition{Topic: topic, Partition: p}
		off, err := st.Resolve(ctx, s.b, tp)
		if err != nil {
			return err
		}
		go func() {
			for ctx.Err() == nil {
				f, err := s.b.Fetch(ctx, tp, off, 500)
				if err != nil {
					if ctx.Err() == nil {
						cancel(fmt.Errorf("tail %s/%d: %w", tp.Topic, tp.Partition, err))
					}
					return
				}
				for _, m := range f.Messages {
					select {
					case msgs <- m:
					case <-ctx.Done():
						return
					}
				}
				off = f.Next
			}
		}()
	}
	for {
		select {
		case m := <-msgs:
			if err := fn(NewMessage(m)); err != nil {
				return err
			}
		case <-ctx.Done():
			if err := context.Cause(ctx); !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		}
	}
}

// Produce implements API.
func (s *Service) Produce(ctx context.Context, topic string, in []Message) ([]Produced, error) {
	if err := s.protect("writing to", topic); err != nil {
		return nil, err
	}
	if err := s.protectDLQ("writing to", topic); err != nil {
		return nil, err
	}
	if len(in) == 0 || len(in) > MaxProduce {
		return nil, fmt.Errorf("produce %d messages: want 1 to %d: %w", len(in), MaxProduce, ferry.ErrInvalidArgument)
	}
	if _, err := s.b.Partitions(ctx, topic); err != nil {
		return nil, err
	}
	msgs := make([]*ferry.Message, 0, len(in))
	for i, m := range in {
		fm, err := m.Decode()
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", i, err)
		}
		fm.Topic, fm.Partition, fm.Offset = topic, 0, 0
		if fm.ID.IsZero() {
			fm.ID = ferry.NewID()
		}
		msgs = append(msgs, fm)
	}
	var dup []bool
	var err error
	if dp, ok := s.b.(backend.DedupPublisher); ok {
		dup, err = dp.PublishDedup(ctx, msgs...)
	} else {
		err = s.b.Publish(ctx, msgs...)
	}
	if err != nil {
		return nil, err
	}
	out := make([]Produced, 0, len(msgs))
	for i, m := range msgs {
		out = append(out, Produced{ID: m.ID.String(), Partition: m.Partition, Offset: m.Offset, Duplicate: i < len(dup) && dup[i]})
	}
	return out, nil
}

// Groups implements API.
func (s *Service) Groups(ctx context.Context) ([]GroupSummary, error) {
	adm, err := s.admin("listing groups")
	if err != nil {
		return nil, err
	}
	groups, err := adm.Groups(ctx)
	if err != nil {
		return nil, err
	}
	out := []GroupSummary{}
	for _, name := range sortedKeys(groups) {
		g, err := s.group(ctx, name, groups[name])
		if err != nil {
			return nil, err
		}
		sum := GroupSummary{Group: name, Partitions: len(g.Partitions), Members: len(g.Members)}
		for _, p := range g.Partitions {
			sum.Lag += p.Lag
		}
		out = append(out, sum)
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// group describes group name with its committed offsets offs.
func (s *Service) group(ctx context.Context, name string, offs []backend.Offset) (Group, error) {
	g := Group{Group: name, Partitions: []GroupPartition{}, Members: []string{}, Running: []Running{}}
	for _, o := range offs {
		_, end, err := s.b.Bounds(ctx, o.TopicPartition)
		if errors.Is(err, ferry.ErrTopicNotFound) {
			continue // committed to a topic deleted since
		}
		if err != nil {
			return g, err
		}
		gp := GroupPartition{Topic: o.Topic, Partition: o.Partition, Committed: o.Offset, End: end}
		if end > o.Offset {
			gp.Lag = end - o.Offset
		}
		g.Partitions = append(g.Partitions, gp)
	}
	members, err := s.adm.Members(ctx, name)
	if err != nil {
		return g, err
	}
	g.Members = append(g.Members, members...)
	for _, c := range s.reg.list() {
		if c.Group() == name {
			g.Running = append(g.Running, running(c))
		}
	}
	return g, nil
}

// Group implements API.
func (s *Service) Group(ctx context.Context, name string) (Group, error) {
	adm, err := s.admin("describing groups")
	if err != nil {
		return Group{}, err
	}
	groups, err := adm.Groups(ctx)
	if err != nil {
		return Group{}, err
	}
	offs, ok := groups[name]
	if !ok {
		members, err := adm.Members(ctx, name)
		if err != nil {
			return Group{}, err
		}
		if len(members) == 0 && !s.reg.runs(name) {
			return Group{}, fmt.Errorf("group %q: no committed offsets and no members: %w", name, ErrNotFound)
		}
	}
	return s.group(ctx, name, offs)
}

// DeleteGroup implements API.
func (s *Service) DeleteGroup(ctx context.Context, group string, force bool) error {
	if group == "" {
		return fmt.Errorf("group delete: name the group: %w", ferry.ErrInvalidArgument)
	}
	del, ok := s.b.(backend.GroupDeleter)
	if !ok {
		return fmt.Errorf("deleting groups on %s: %w", s.name, ErrUnsupported)
	}
	g, err := s.Group(ctx, group) // not found: no offsets, no members
	if err != nil {
		return err
	}
	if !force && len(g.Members) > 0 {
		return fmt.Errorf("group %s has %d live member(s) (%s), which would commit again: stop them, or force it: %w",
			group, len(g.Members), strings.Join(g.Members, ", "), ErrGroupActive)
	}
	return del.DeleteGroup(ctx, group)
}

// ResetGroup implements API.
func (s *Service) ResetGroup(ctx context.Context, group string, r Reset) ([]ResetOffset, error) {
	if group == "" || r.Topic == "" {
		return nil, fmt.Errorf("group reset: name the group and the topic: %w", ferry.ErrInvalidArgument)
	}
	if err := s.protect("resetting offsets of", r.Topic); err != nil {
		return nil, err
	}
	st, err := ParseStart(r.To, s.now())
	if err != nil {
		return nil, fmt.Errorf("reset to %w", err)
	}
	adm, err := s.admin("resetting groups")
	if err != nil {
		return nil, err
	}
	n, err := s.b.Partitions(ctx, r.Topic)
	if err != nil {
		return nil, err
	}
	if r.Partition != nil {
		if err := checkPartition(r.Topic, *r.Partition, n); err != nil {
			return nil, err
		}
	}
	if !r.Force {
		members, err := adm.Members(ctx, group)
		if err != nil {
			return nil, err
		}
		if len(members) > 0 {
			return nil, fmt.Errorf("group %s has %d live member(s) (%s), which would commit over a reset: stop them, or force it: %w",
				group, len(members), strings.Join(members, ", "), ErrGroupActive)
		}
	}
	var offs []backend.Offset
	out := []ResetOffset{}
	for p := range n {
		if r.Partition != nil && int32(p) != *r.Partition {
			continue
		}
		tp := backend.TopicPartition{Topic: r.Topic, Partition: int32(p)}
		off, err := st.Resolve(ctx, s.b, tp)
		if err != nil {
			return nil, err
		}
		offs = append(offs, backend.Offset{TopicPartition: tp, Offset: off})
		out = append(out, ResetOffset{Group: group, Topic: r.Topic, Partition: int32(p), Offset: off})
	}
	if err := adm.SetCommitted(ctx, group, offs...); err != nil {
		return nil, err
	}
	return out, nil
}

// queue opens the DLQ topic, which must exist.
func (s *Service) queue(ctx context.Context, topic string) (*dlq.Queue, error) {
	if err := s.protect("using as a DLQ", topic); err != nil {
		return nil, err
	}
	if _, err := s.b.Partitions(ctx, topic); err != nil {
		if errors.Is(err, ferry.ErrTopicNotFound) {
			return nil, fmt.Errorf("DLQ topic %q does not exist (a consumer of the group creates it when it starts): %w: %w", topic, ErrNoDLQ, err)
		}
		return nil, err
	}
	return dlq.Open(s.b, topic), nil
}

// DLQs returns the dead-letter queues: the topics named GROUP.dlq and the
// registered consumers' DLQ topics, with their unresolved entries counted.
// Counting reads each DLQ topic whole.
func (s *Service) DLQs(ctx context.Context) ([]DLQSummary, error) {
	return s.dlqs(ctx, func(string) bool { return true })
}

// dlqs is DLQs of the queues allowed says: the others are not read.
func (s *Service) dlqs(ctx context.Context, allowed func(queue string) bool) ([]DLQSummary, error) {
	adm, err := s.admin("listing DLQs")
	if err != nil {
		return nil, err
	}
	infos, err := adm.Topics(ctx)
	if err != nil {
		return nil, err
	}
	out := []DLQSummary{}
	for _, ti := range infos {
		group, ok := s.reg.dlqGroup(ti.Name)
		if !ok || !allowed(ti.Name) {
			continue
		}
		entries, err := dlq.Open(s.b, ti.Name).List(ctx, dlq.Filter{})
		if err != nil {
			return nil, fmt.Errorf("DLQ %s: %w", ti.Name, err)
		}
		sum := DLQSummary{Queue: ti.Name, Group: group, Classes: map[string]int{}}
		for _, e := range entries {
			switch e.State {
			case dlq.StateDead:
				sum.Dead++
			case dlq.StateRequested:
				sum.Requested++
			}
			sum.Classes[string(e.Class)]++
		}
		out = append(out, sum)
	}
	slices.SortFunc(out, func(a, b DLQSummary) int { return strings.Compare(a.Queue, b.Queue) })
	return out, nil
}

// DeadLetters implements API.
func (s *Service) DeadLetters(ctx context.Context, queue string, f Filter, page Page) ([]DeadLetter, error) {
	flt, err := f.Parse(s.now())
	if err != nil {
		return nil, err
	}
	n, err := limit(page.Limit)
	if err != nil {
		return nil, err
	}
	seen, err := parseCursor(page.After)
	if err != nil {
		return nil, err
	}
	q, err := s.queue(ctx, queue)
	if err != nil {
		return nil, err
	}
	entries, err := q.List(ctx, flt)
	if err != nil {
		return nil, err
	}
	out := make([]DeadLetter, 0, min(n, len(entries)))
	for _, e := range entries {
		p, o := e.Record.Partition, e.Record.Offset
		if last, ok := seen[p]; ok && o <= last {
			continue // listed on an earlier page
		}
		if len(out) == n {
			break
		}
		seen[p] = o
		d := NewDeadLetter(e, false)
		d.Position = seen.String()
		out = append(out, d)
	}
	return out, nil
}

// cursor is how far a DLQ list has gone in each partition of the DLQ
// topic: the offset of the last entry listed there. An entry appended
// later to a partition passed already still comes after it, so that
// paging skips nothing (a list goes partition by partition).
type cursor map[int32]uint64

// String is the cursor's form in a DeadLetter's position:
// "PARTITION:OFFSET", comma-separated, by partition.
func (c cursor) String() string {
	var b strings.Builder
	for i, p := range slices.Sorted(maps.Keys(c)) {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%d:%d", p, c[p])
	}
	return b.String()
}

func parseCursor(s string) (cursor, error) {
	c := cursor{}
	if s == "" {
		return c, nil
	}
	for _, part := range strings.Split(s, ",") {
		ps, offs, ok := strings.Cut(part, ":")
		p, perr := strconv.ParseInt(ps, 10, 32)
		o, oerr := strconv.ParseUint(offs, 10, 64)
		if _, dup := c[int32(p)]; !ok || perr != nil || oerr != nil || p < 0 || dup {
			return nil, fmt.Errorf("after %q: want an entry's position (PARTITION:OFFSET, comma-separated, from a list's \"position\"): %w", s, ferry.ErrInvalidArgument)
		}
		c[int32(p)] = o
	}
	return c, nil
}

// NewDeadLetter renders e for the API, with its original message if full.
func NewDeadLetter(e dlq.Entry, full bool) DeadLetter {
	d := DeadLetter{ID: e.Original.ID.String(), State: e.State, Topic: e.Original.Topic, Partition: e.Original.Partition,
		Offset: e.Original.Offset, Key: string(e.Original.Key), Group: e.Group, Handler: e.Handler, Attempts: e.Attempts,
		FirstFailure: e.FirstFailure.UTC(), LastFailure: e.LastFailure.UTC(), Class: string(e.Class), Error: e.Error, Reason: e.Reason,
		Position: fmt.Sprintf("%d:%d", e.Record.Partition, e.Record.Offset)}
	if !e.RetryAt.IsZero() {
		t := e.RetryAt.UTC()
		d.RetryAt = &t
	}
	if full {
		d.Stack = e.Stack
		m := NewMessage(e.Original)
		d.Message = &m
	}
	return d
}

// DeadLetter implements API.
func (s *Service) DeadLetter(ctx context.Context, queue, id string) (DeadLetter, error) {
	mid, err := ferry.ParseID(id)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("entry %q: want a message ID (UUID): %w", id, ferry.ErrInvalidArgument)
	}
	q, err := s.queue(ctx, queue)
	if err != nil {
		return DeadLetter{}, err
	}
	e, err := q.Get(ctx, mid)
	if errors.Is(err, dlq.ErrNotFound) {
		return DeadLetter{}, fmt.Errorf("entry %s in %s: %w: %w", id, queue, ErrNotFound, err)
	}
	if err != nil {
		return DeadLetter{}, err
	}
	return NewDeadLetter(e, true), nil
}

// checkRedrive checks a redrive before it starts: its filter, pace,
// target and queue.
func (s *Service) checkRedrive(ctx context.Context, queue string, r Redrive) (dlq.Filter, *dlq.Queue, error) {
	flt, err := r.Filter.Parse(s.now())
	if err != nil {
		return flt, nil, err
	}
	if r.PerSecond < 0 {
		return flt, nil, fmt.Errorf("redrive per_second %v: want 0 (unlimited) or more: %w", r.PerSecond, ferry.ErrInvalidArgument)
	}
	if r.To != "" {
		if err := s.protect("redriving into", r.To); err != nil {
			return flt, nil, err
		}
		if r.To == queue {
			return flt, nil, fmt.Errorf("redrive to %s: that is the DLQ itself: %w", r.To, ferry.ErrInvalidArgument)
		}
	}
	q, err := s.queue(ctx, queue)
	return flt, q, err
}

// Redrive implements API.
func (s *Service) Redrive(ctx context.Context, queue string, r Redrive, progress func(Progress)) (RedriveResult, error) {
	res := RedriveResult{To: r.To}
	flt, q, err := s.checkRedrive(ctx, queue, r)
	if err != nil {
		return res, err
	}
	if r.To != "" {
		// A copy in an entry's own source topic would land after the
		// key's later messages and release the key: it would overtake
		// them. Back to the source is a request for its owner (no To).
		entries, err := q.List(ctx, flt)
		if err != nil {
			return res, err
		}
		for _, e := range entries {
			if e.Original.Topic == r.To {
				return res, fmt.Errorf("redrive to %s: entry %s came from it, and a copy would overtake its key's later messages; redrive without a target to have its consumer handle it in order: %w",
					r.To, e.Original.ID, ferry.ErrInvalidArgument)
			}
		}
	}
	opts := dlq.RedriveOpts{Filter: flt, To: r.To, IncludeRequested: r.IncludeRequested, PerSecond: r.PerSecond}
	if progress != nil {
		opts.Progress = func(done, total int) { progress(Progress{Done: done, Total: total}) }
	}
	n, err := q.Redrive(ctx, opts)
	res.Entries = n
	if err != nil {
		return res, fmt.Errorf("after %d redriven: %w", n, err)
	}
	if r.To != "" && !r.IncludeRequested {
		// What the move left to the entries' owner.
		left, err := q.List(ctx, flt)
		if err != nil {
			return res, err
		}
		res.Left = len(left)
	}
	return res, nil
}

// Purge implements API.
func (s *Service) Purge(ctx context.Context, queue string, p Purge) (PurgeResult, error) {
	flt, err := p.Filter.Parse(s.now())
	if err != nil {
		return PurgeResult{}, err
	}
	q, err := s.queue(ctx, queue)
	if err != nil {
		return PurgeResult{}, err
	}
	n, err := q.Purge(ctx, flt)
	return PurgeResult{Purged: n}, err
}

// Running is used by Registry; running renders c.
func running(c Runner) Running {
	st := c.Stats()
	r := Running{Member: c.Member(), Healthy: true, Owned: []OwnedLane{},
		Stats: RunningStats{Buffered: st.Buffered, InFlight: st.InFlight, Waiting: st.Waiting, Keys: st.Keys,
			ParkedKeys: st.ParkedKeys, ParkedMessages: st.ParkedMessages, Breaker: st.Breaker}}
	if err := c.Healthy(); err != nil {
		r.Healthy, r.Problem = false, err.Error()
	}
	for _, p := range c.PartitionStats() {
		r.Owned = append(r.Owned, OwnedLane{Topic: p.Topic, Partition: p.Partition, Committed: p.Committed, Watermark: p.Watermark,
			Next: p.Next, Buffered: p.Buffered})
	}
	return r
}
