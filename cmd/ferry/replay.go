package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

func newGroupsResetCmd(g *globals) *cobra.Command {
	var topic, to string
	var partition int
	cmd := &cobra.Command{
		Use:   "reset GROUP",
		Short: "Move a group's committed offsets (earliest, latest, an offset or a time)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if topic == "" {
				return usageError{fmt.Errorf("name the topic to reset with --topic")}
			}
			start, err := parseFrom("--to", to, time.Now())
			if err != nil {
				return err
			}
			l, err := g.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer l.Close()
			info, err := l.Topic(topic)
			if err != nil {
				return usageError{err}
			}
			var offs []commitlog.Offset
			for p := range info.Partitions {
				if partition >= 0 && p != partition {
					continue
				}
				off, err := offsetIn(start, l, topic, int32(p))
				if err != nil {
					return err
				}
				offs = append(offs, commitlog.Offset{Topic: topic, Partition: int32(p), Offset: off})
			}
			if len(offs) == 0 {
				return usageError{fmt.Errorf("partition %d of %s: it has partitions 0 to %d", partition, topic, len(info.Partitions)-1)}
			}
			if err := l.CommitOffsets(cmd.Context(), args[0], offs...); err != nil {
				return err
			}
			type row struct {
				Group     string `json:"group"`
				Topic     string `json:"topic"`
				Partition int32  `json:"partition"`
				Offset    uint64 `json:"offset"`
			}
			rows := []row{}
			for _, o := range offs {
				rows = append(rows, row{args[0], o.Topic, o.Partition, o.Offset})
			}
			return g.print(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) {
				for _, r := range rows {
					fmt.Fprintf(w, "%s %s/%d -> %d\n", r.Group, r.Topic, r.Partition, r.Offset)
				}
			})
		},
	}
	cmd.Flags().StringVar(&topic, "topic", "", "topic whose offsets to move")
	cmd.Flags().StringVar(&to, "to", "earliest", "earliest, latest, an offset (42), -N (N before each partition's end), an RFC 3339 time, or a duration ago (1h)")
	cmd.Flags().IntVarP(&partition, "partition", "p", -1, "only this partition")
	return cmd
}

// replayOfHeader is the header every replay copy carries, naming the
// message it copies as TOPIC/PARTITION/OFFSET. A rerun of a replay reads
// these from the target and skips what they name, whether or not the
// log's deduplication window still remembers the copies' IDs.
const replayOfHeader = "ferry-replay-of"

// replayOfIDHeader carries the copied message's ID (the copy has its own).
const replayOfIDHeader = "ferry-replay-of-id"

func newReplayCmd(g *globals) *cobra.Command {
	var from, until, to string
	cmd := &cobra.Command{
		Use:   "replay TOPIC --from START [--until TIME] --to TOPIC",
		Short: "Copy a range of a topic into another topic, once",
		Long: `replay copies the messages of TOPIC from --from on into the topic --to,
keeping key, payload and headers. --from takes what consume's does:

  earliest, latest   the first retained message, or the end
  42                 an offset (the same in every partition)
  -10                ten before the end of each partition (not before its start)
  2026-11-23T10:00:00Z
                     messages at or after an RFC 3339 time
  1h, 30m, 1h30m     messages of the last hour, 30 minutes, ...

--until (an RFC 3339 time or a duration ago) leaves out messages at or
after it; without it, replay copies up to the end as it was when it started.

If --to does not exist, replay creates it with as many partitions as TOPIC
(and says so on stderr).

A replay copies each message once, however often it runs: each copy carries
ferry-replay-of: TOPIC/PARTITION/OFFSET (and ferry-replay-of-id: the
original's ID), and replay first reads --to and skips every message already
copied there. Each copy's ID is derived from TOPIC, partition, offset and
--to, the same in every run, so within the log's deduplication window the
log recognises a repeat as well. "already there" counts what was skipped.

With --json it prints {"from","to","created","copied","already_there"}.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			now := time.Now()
			start, err := parseFrom("--from", from, now)
			if err != nil {
				return err
			}
			var end time.Time
			if until != "" {
				if end, err = parseUntil(until, now); err != nil {
					return err
				}
			}
			if to == args[0] {
				return usageError{fmt.Errorf("--to must name another topic than %s", args[0])}
			}
			l, err := g.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer l.Close()
			res, err := runReplay(cmd.Context(), l, replayRange{source: args[0], target: to, start: start, until: end}, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), res, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "replayed %d messages from %s into %s (%d already there)\n", res.Copied, res.From, res.To, res.AlreadyThere)
			})
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "where to start (required): "+strings.TrimPrefix(fromFlagHelp, "where to start: "))
	cmd.Flags().StringVar(&until, "until", "", "leave out messages at or after this RFC 3339 time or duration ago (default: up to the end)")
	cmd.Flags().StringVar(&to, "to", "", "topic to copy into (required; created with the source's partitions if missing)")
	cmd.MarkFlagRequired("from")
	cmd.MarkFlagRequired("to")
	return cmd
}

// parseUntil parses replay's --until: an RFC 3339 time or a duration ago.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if t, ago, ok := timeOrAgo(s, now); ok && ago >= 0 {
		return t, nil
	}
	return time.Time{}, usageError{fmt.Errorf("--until %q: want an RFC 3339 time (2026-11-23T10:00:00Z) or a duration ago (1h, 30m)", s)}
}

// replayRange is what to replay: the messages of source from start on,
// before until (zero: no bound), into target.
type replayRange struct {
	source, target string
	start          startPoint
	until          time.Time
}

// replayResult is what a replay did (replay --json).
type replayResult struct {
	From         string `json:"from"`
	To           string `json:"to"`
	Created      bool   `json:"created"` // the target was created, with the source's partition count
	Copied       int    `json:"copied"`
	AlreadyThere int    `json:"already_there"` // copied by an earlier replay (or concurrently)
}

// runReplay copies r's messages into r.target, creating it with the
// source's partition count if needed (said on notes). It skips the
// messages whose copies r.target already holds (their ferry-replay-of
// header), so it copies each message once however often it runs.
func runReplay(ctx context.Context, l *commitlog.Log, r replayRange, notes io.Writer) (replayResult, error) {
	res := replayResult{From: r.source, To: r.target}
	if r.target == "" || r.target == r.source {
		return res, usageError{fmt.Errorf("--to must name another topic than %s", r.source)}
	}
	info, err := l.Topic(r.source)
	if err != nil {
		return res, usageError{err}
	}
	if _, err := l.Topic(r.target); errors.Is(err, ferry.ErrTopicNotFound) {
		if err := l.CreateTopic(ctx, r.target, commitlog.TopicConfig{Partitions: len(info.Partitions)}); err != nil {
			return res, err
		}
		res.Created = true
		fmt.Fprintf(notes, "ferry: created topic %s with %d partitions, as %s has\n", r.target, len(info.Partitions), r.source)
	} else if err != nil {
		return res, err
	}
	done, err := replayedFrom(l, r.target, r.source)
	if err != nil {
		return res, err
	}
	since, bySince := startTime(r.start)
	for p := range info.Partitions {
		part := int32(p)
		off, err := offsetIn(r.start, l, r.source, part)
		if err != nil {
			return res, err
		}
		off = max(off, info.Partitions[p].Start) // an offset retention has removed
		for off < info.Partitions[p].End {
			read, err := l.Read(r.source, part, off, commitlog.ReadOpts{})
			if err != nil {
				return res, err
			}
			var batch []*ferry.Message
			for _, m := range read.Messages {
				if m.Offset >= info.Partitions[p].End {
					break
				}
				if bySince && m.Time.Before(since) || !r.until.IsZero() && !m.Time.Before(r.until) {
					continue
				}
				if done[replayPos{part, m.Offset}] {
					res.AlreadyThere++
					continue
				}
				headers := append(append([]ferry.Header(nil), m.Headers...),
					ferry.Header{Key: replayOfHeader, Value: []byte(replayOf(r.source, part, m.Offset))},
					ferry.Header{Key: replayOfIDHeader, Value: []byte(m.ID.String())})
				batch = append(batch, &ferry.Message{ID: replayCopyID(r.source, part, m.Offset, r.target), Topic: r.target,
					Key: m.Key, Payload: m.Payload, Headers: headers})
			}
			if len(batch) > 0 {
				b := &commitlog.Batch{Messages: batch}
				if err := l.Commit(ctx, b); err != nil {
					return res, err
				}
				res.Copied += len(batch) - b.Duplicates
				res.AlreadyThere += b.Duplicates
			}
			if len(read.Messages) == 0 {
				break
			}
			off = read.Next
		}
	}
	return res, nil
}

// replayPos is a message's place in its topic.
type replayPos struct {
	partition int32
	offset    uint64
}

// replayOf is the ferry-replay-of value naming a copied message.
func replayOf(topic string, p int32, off uint64) string {
	return fmt.Sprintf("%s/%d/%d", topic, p, off)
}

// replayedFrom reads target and returns the messages of source it holds
// copies of, by the last ferry-replay-of header of each message (a copy of
// a copy also carries its original's).
func replayedFrom(l *commitlog.Log, target, source string) (map[replayPos]bool, error) {
	info, err := l.Topic(target)
	if err != nil {
		return nil, err
	}
	done := map[replayPos]bool{}
	for p, pi := range info.Partitions {
		for off := pi.Start; off < pi.End; {
			read, err := l.Read(target, int32(p), off, commitlog.ReadOpts{})
			if errors.Is(err, ferry.ErrOffsetOutOfRange) {
				start, _, _ := l.Bounds(target, int32(p))
				if off < start {
					off = start // the cleaner moved the start
					continue
				}
			}
			if err != nil {
				return nil, err
			}
			for _, m := range read.Messages {
				var of []byte
				for _, h := range m.Headers {
					if h.Key == replayOfHeader {
						of = h.Value
					}
				}
				if pos, ok := parseReplayOf(string(of), source); ok {
					done[pos] = true
				}
			}
			if len(read.Messages) == 0 {
				break
			}
			off = read.Next
		}
	}
	return done, nil
}

// parseReplayOf parses a ferry-replay-of value naming a message of
// source.
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

// replayCopyID is the ID of the copy in target of source's message at
// partition p, offset off: a UUIDv8 from a SHA-256 of the four, so that
// the same replay always gives the same IDs.
func replayCopyID(source string, p int32, off uint64, target string) ferry.ID {
	sum := sha256.Sum256([]byte("ferry-replay\x00" + replayOf(source, p, off) + "\x00" + target))
	var id ferry.ID
	copy(id[:], sum[:])
	id[6] = id[6]&0x0f | 0x80 // version 8
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	return id
}
