package admin

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
)

// ReplayOfHeader is the header every replay copy carries, naming the
// message it copies as TOPIC/PARTITION/OFFSET. A rerun of a replay reads
// these from the target and skips what they name, whether or not the
// backend's deduplication window still remembers the copies' IDs.
const ReplayOfHeader = "ferry-replay-of"

// ReplayOfIDHeader carries the copied message's ID (the copy has its own).
const ReplayOfIDHeader = "ferry-replay-of-id"

// replayBatch is how many copies one publish carries.
const replayBatch = 500

// Replay implements API: it copies r.From's messages from r.Start on
// (before r.Until) into r.To, creating r.To with r.From's partition count
// if it does not exist. It copies each message once however often it
// runs: it skips the messages whose copies r.To holds already (their
// ferry-replay-of header), and each copy's ID is derived from the source
// position and the target, so that the backend's deduplication also
// recognises a concurrent repeat.
func (s *Service) Replay(ctx context.Context, r Replay) (ReplayResult, error) {
	res := ReplayResult{From: r.From, To: r.To}
	if r.From == "" || r.To == "" || r.To == r.From {
		return res, fmt.Errorf("replay: name a source and another topic to copy into: %w", ferry.ErrInvalidArgument)
	}
	if err := s.protect("replaying into", r.To); err != nil {
		return res, err
	}
	if err := s.protectDLQ("replaying into", r.To); err != nil {
		return res, err
	}
	now := s.now()
	st, err := ParseStart(r.Start, now)
	if err != nil {
		return res, fmt.Errorf("replay start %w", err)
	}
	var until time.Time // zero: no bound
	if r.Until != "" {
		t, ago, ok := TimeOrAgo(r.Until, now)
		if !ok || ago < 0 {
			return res, fmt.Errorf("replay until %q: want an RFC 3339 time (2026-11-23T10:00:00Z) or a duration ago (1h, 30m): %w", r.Until, ferry.ErrInvalidArgument)
		}
		until = t
	}
	parts, err := s.b.Partitions(ctx, r.From)
	if err != nil {
		return res, err
	}
	if _, err := s.b.Partitions(ctx, r.To); errors.Is(err, ferry.ErrTopicNotFound) {
		if err := s.b.EnsureTopic(ctx, r.To, parts); err != nil {
			return res, err
		}
		res.Created, res.Partitions = true, parts
	} else if err != nil {
		return res, err
	}
	done, err := s.replayedFrom(ctx, r.To, r.From)
	if err != nil {
		return res, err
	}
	for p := range parts {
		tp := backend.TopicPartition{Topic: r.From, Partition: int32(p)}
		off, err := st.Resolve(ctx, s.b, tp)
		if err != nil {
			return res, err
		}
		var batch []*ferry.Message
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			if err := s.b.Publish(ctx, batch...); err != nil {
				return err
			}
			res.Copied += len(batch)
			batch = batch[:0]
			return nil
		}
		var ferr error
		err = s.scan(ctx, tp, off, func(m *ferry.Message, _ uint64) bool {
			if st.Kind == StartTime && m.Time.Before(st.Time) || !until.IsZero() && !m.Time.Before(until) {
				return true
			}
			if done.has(tp.Partition, m.Offset) {
				res.AlreadyThere++
				return true
			}
			headers := append(append([]ferry.Header(nil), m.Headers...),
				ferry.Header{Key: ReplayOfHeader, Value: []byte(replayOf(r.From, tp.Partition, m.Offset))},
				ferry.Header{Key: ReplayOfIDHeader, Value: []byte(m.ID.String())})
			batch = append(batch, &ferry.Message{ID: ReplayCopyID(r.From, tp.Partition, m.Offset, r.To), Topic: r.To,
				Key: m.Key, Payload: m.Payload, Headers: headers})
			if len(batch) >= replayBatch {
				ferr = flush()
			}
			return ferr == nil
		})
		if err == nil {
			err = ferr
		}
		if err == nil {
			err = flush()
		}
		if err != nil {
			return res, fmt.Errorf("after %d copied: %w", res.Copied, err)
		}
	}
	return res, nil
}

// replayPos is a message's place in its topic.
type replayPos struct {
	partition int32
	offset    uint64
}

// offsetSet is a set of offsets per partition, kept as sorted disjoint
// spans: the copies a replay made are runs of consecutive offsets, so a
// target holding millions of copies takes a few spans, not a map entry
// each.
type offsetSet map[int32][]span

// span is the offsets [from, to).
type span struct{ from, to uint64 }

func (s offsetSet) add(p int32, off uint64) {
	sp := s[p]
	// The first span that ends at or after off.
	i, _ := slices.BinarySearchFunc(sp, off, func(x span, off uint64) int { return cmp.Compare(x.to, off) })
	switch {
	case i < len(sp) && sp[i].from <= off && off < sp[i].to:
		return // there already
	case i < len(sp) && sp[i].to == off:
		sp[i].to++ // extends span i; it may now touch span i+1
		if i+1 < len(sp) && sp[i+1].from == sp[i].to {
			sp[i].to = sp[i+1].to
			sp = slices.Delete(sp, i+1, i+2)
		}
	case i < len(sp) && sp[i].from == off+1:
		sp[i].from = off
	default:
		sp = slices.Insert(sp, i, span{off, off + 1})
	}
	s[p] = sp
}

func (s offsetSet) has(p int32, off uint64) bool {
	sp := s[p]
	i, _ := slices.BinarySearchFunc(sp, off, func(x span, off uint64) int { return cmp.Compare(x.to, off+1) })
	return i < len(sp) && sp[i].from <= off && off < sp[i].to
}

// replayOf is the ferry-replay-of value naming a copied message.
func replayOf(topic string, p int32, off uint64) string {
	return fmt.Sprintf("%s/%d/%d", topic, p, off)
}

// replayedFrom reads target and returns the messages of source it holds
// copies of, by the last ferry-replay-of header of each message (a copy of
// a copy also carries its original's).
func (s *Service) replayedFrom(ctx context.Context, target, source string) (offsetSet, error) {
	parts, err := s.b.Partitions(ctx, target)
	if err != nil {
		return nil, err
	}
	done := offsetSet{}
	for p := range parts {
		err := s.scan(ctx, backend.TopicPartition{Topic: target, Partition: int32(p)}, 0, func(m *ferry.Message, _ uint64) bool {
			var of []byte
			for _, h := range m.Headers {
				if h.Key == ReplayOfHeader {
					of = h.Value
				}
			}
			if pos, ok := parseReplayOf(string(of), source); ok {
				done.add(pos.partition, pos.offset)
			}
			return true
		})
		if err != nil {
			return nil, err
		}
	}
	return done, nil
}

// ParseReplayOf parses a ferry-replay-of value naming a message of
// source: its partition and offset.
func ParseReplayOf(v, source string) (partition int32, offset uint64, ok bool) {
	pos, ok := parseReplayOf(v, source)
	return pos.partition, pos.offset, ok
}

func parseReplayOf(v, source string) (replayPos, bool) {
	rest, ok := strings.CutPrefix(v, source+"/")
	if !ok {
		return replayPos{}, false
	}
	ps, offs, ok := strings.Cut(rest, "/")
	if !ok {
		return replayPos{}, false
	}
	p, err1 := strconv.ParseInt(ps, 10, 32)
	off, err2 := strconv.ParseUint(offs, 10, 64)
	if err1 != nil || err2 != nil {
		return replayPos{}, false
	}
	return replayPos{int32(p), off}, true
}

// ReplayCopyID is the ID of the copy in target of source's message at
// partition p, offset off: a UUIDv8 from a SHA-256 of the four, so that
// the same replay always gives the same IDs.
func ReplayCopyID(source string, p int32, off uint64, target string) ferry.ID {
	sum := sha256.Sum256([]byte("ferry-replay\x00" + replayOf(source, p, off) + "\x00" + target))
	var id ferry.ID
	copy(id[:], sum[:])
	id[6] = id[6]&0x0f | 0x80 // version 8
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id
}
