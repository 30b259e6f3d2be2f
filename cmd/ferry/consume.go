package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/commitlog"
)

// consumeLong is consume's help; tailLong is tail's.
const consumeLong = `consume prints the messages of a topic (all partitions, or --partition),
starting at --from:

  earliest, latest   the first retained message, or the end
  42                 an offset (the same in every partition)
  -10                ten before the end of each partition (not before its start)
  2026-11-23T10:00:00Z
                     the first message at or after an RFC 3339 time
  1h, 30m, 1h30m     a duration ago

With --follow it waits for new messages, also while another process owns
the directory. With --group it reads from the group's committed offsets (or
--from where it has none) and commits what it printed; this needs the
directory to itself. tail is consume --follow --from latest.

With --server (a ferry admin API), --nats or --kafka it reads through the
admin API or the backend instead, with the same output; --group is for a
data directory only.

A partition's messages come in offset order, and a message not due yet (a
--delay or --not-before) stops its partition there, as it stops its
consumers: consume says so on stderr, with the --from that reads past it.

` + outputHelp

const tailLong = `tail prints the messages appended to a topic from now on (all partitions,
or --partition) and keeps waiting for more until interrupted: it is consume
--follow --from latest. It reads while another process owns the directory.
--from starts earlier instead (earliest, an offset, -10 for the last ten of
each partition, an RFC 3339 time, or a duration ago like 1h); -n stops after
that many messages. With --server, --nats or --kafka it follows through the
admin API's stream or the backend.

` + outputHelp

// outputHelp describes the output forms consume and tail share.
const outputHelp = `Output, one message at a time:

  default     TOPIC/PARTITION@OFFSET<tab>KEY<tab>PAYLOAD, one line each
  --verbose   a block per message: position, time and ID, key, every
              header in order, payload
  --format    a format string, like kcat's -f: %t topic, %p partition,
              %o offset, %k key, %v value (payload), %h headers
              (name=value,name=value), %T timestamp (ms since the Unix
              epoch), %i message ID, %% a percent sign; \n, \t, \r and \\
              escapes. No newline is added: end it with \n.
  --json      one JSON object per line: id, topic, partition, offset, time,
              encoding, key, headers, payload. headers is a list of
              {"key","value"} objects in the message's order, repeated names
              kept. encoding says how key, payload and every header value are
              written: "text" when all of them are valid UTF-8, else
              "base64" (standard, padded), so the output is lossless. A
              header name that is not valid UTF-8 is written in base64 with
              "key_encoding":"base64" on its header.

-e/--encoding base64|hex|text forces how keys, payloads and header values
are written, in every output form: base64 (standard, padded) or hex, or
text, which fails on the first message that is not valid UTF-8 (naming it)
rather than print it altered. Without -e, --json picks per message as
above and the other forms print the bytes as they are.`

func newConsumeCmd(g *globals, name string, follow bool, from string) *cobra.Command {
	var partition, max int
	var group, metricsAddr string
	var out outputOpts
	short, long := "Print a topic's messages", consumeLong
	if follow {
		short, long = "Follow a topic from its end (consume --follow --from latest)", tailLong
	}
	cmd := &cobra.Command{
		Use:   name + " TOPIC",
		Short: short,
		Long:  long,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start, err := parseFrom("--from", from, time.Now())
			if err != nil {
				return err
			}
			out.json = g.json
			pr, err := newPrinter(cmd.OutOrStdout(), out)
			if pr != nil {
				pr.notes = cmd.ErrOrStderr()
			}
			if err != nil {
				return err
			}
			tel, err := startTelemetry(metricsAddr, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer tel.close()
			switch {
			case g.remote.isRemote() && group != "":
				return usageError{fmt.Errorf("--group reads and commits offsets in a data directory: it needs --dir, not --server, --nats or --kafka")}
			case g.remote.isRemote():
				api, closeAPI, err := g.api(cmd.Context(), cmd, false, false)
				if err != nil {
					return err
				}
				defer closeAPI()
				return runRemoteConsume(cmd.Context(), api, tel, pr, args[0], int32(partition), from, follow, max)
			case group != "":
				return runGroupConsume(cmd.Context(), g, tel, pr, args[0], group, start, follow, max)
			}
			return runConsume(cmd.Context(), g, tel, pr, args[0], int32(partition), start, follow, max)
		},
	}
	cmd.Flags().StringVarP(&group, "group", "g", "", "consume as this group: resume from its offsets and commit them")
	cmd.Flags().IntVarP(&partition, "partition", "p", -1, "only this partition")
	cmd.Flags().StringVar(&from, "from", from, fromFlagHelp)
	cmd.Flags().BoolVarP(&follow, "follow", "f", follow, "keep waiting for new messages")
	cmd.Flags().IntVarP(&max, "max", "n", 0, "stop after this many messages (0: no limit)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this address (host:port)")
	cmd.Flags().StringVarP(&out.format, "format", "F", "", `print each message by this format string: %k key, %v payload, %h headers, %T timestamp (ms), %p partition, %o offset, %t topic, %i ID, %% percent; \n \t escapes`)
	cmd.Flags().BoolVarP(&out.verbose, "verbose", "v", false, "print a block per message with its time, ID and every header")
	cmd.Flags().StringVarP(&out.encoding, "encoding", "e", "", "write keys, payloads and header values as base64, hex or text (text: a message that is not valid UTF-8 is an error); default: --json picks text or base64 per message, other forms print bytes as they are")
	return cmd
}

// runConsume reads the log read-only; to follow, it reopens the directory
// when it reaches the end, so it sees what the owning process appended.
func runConsume(ctx context.Context, g *globals, tel *telemetry, pr *printer, topic string, only int32, from startPoint, follow bool, max int) error {
	l, err := g.open(ctx, false)
	if err != nil {
		return err
	}
	t, err := l.Topic(topic)
	if err != nil {
		l.Close()
		return usageError{err}
	}
	next := map[int32]uint64{}
	for p := range t.Partitions {
		if only >= 0 && int32(p) != only {
			continue
		}
		off, err := offsetIn(from, l, topic, int32(p))
		if err != nil {
			l.Close()
			return err
		}
		next[int32(p)] = off
	}
	if len(next) == 0 {
		l.Close()
		return usageError{fmt.Errorf("partition %d of %s: it has partitions 0 to %d", only, topic, len(t.Partitions)-1)}
	}
	printed := 0
	for {
		progressed := false
		for p, off := range next {
			res, err := l.Read(topic, p, off, commitlog.ReadOpts{})
			if errors.Is(err, ferry.ErrOffsetOutOfRange) {
				start, _, _ := l.Bounds(topic, p)
				if off < start {
					next[p] = start // retention moved past us: read on from there
					progressed = true
					continue
				}
			}
			if err != nil {
				l.Close()
				return err
			}
			for _, m := range res.Messages {
				if err := pr.print(m); err != nil {
					l.Close()
					return err
				}
				tel.countPrinted()
				printed++
				if max > 0 && printed >= max {
					return l.Close()
				}
			}
			if len(res.Messages) > 0 {
				progressed = true
			}
			next[p] = res.Next
		}
		if progressed {
			continue
		}
		if !follow {
			for p, off := range next {
				if _, end, err := l.Bounds(topic, p); err == nil && off < end {
					res, err := l.Read(topic, p, off, commitlog.ReadOpts{MaxMessages: 1, IncludeDelayed: true})
					if err == nil && len(res.Messages) > 0 && !res.Messages[0].NotBefore.IsZero() {
						pr.noteDelayed(topic, p, off, res.Messages[0].NotBefore)
					}
				}
			}
			return l.Close()
		}
		l.Close()
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		if l, err = g.open(ctx, false); err != nil {
			return err
		}
	}
}

// errPrintedEnough ends a remote tail once --max messages are printed.
var errPrintedEnough = errors.New("printed enough")

// runRemoteConsume prints a topic's messages through the admin API (of
// --server, or a Service over --nats or --kafka): without follow, page by
// page up to each partition's end as it was when the partition was first
// read; with follow, from the API's tail stream until ctx ends.
func runRemoteConsume(ctx context.Context, api admin.API, tel *telemetry, pr *printer, topic string, only int32, from string, follow bool, max int) error {
	now := time.Now()
	printed := 0
	print := func(am admin.Message) error {
		m, err := am.Decode()
		if err != nil {
			return err
		}
		if err := pr.print(m); err != nil {
			return err
		}
		tel.countPrinted()
		if printed++; max > 0 && printed >= max {
			return errPrintedEnough
		}
		return nil
	}
	if follow {
		err := api.Tail(ctx, topic, only, from, print)
		if errors.Is(err, errPrintedEnough) {
			return nil
		}
		return err
	}
	t, err := api.Topic(ctx, topic)
	if err != nil {
		return err
	}
	parts := make([]int32, 0, t.Partitions)
	for p := range int32(t.Partitions) {
		if only < 0 || p == only {
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return usageError{fmt.Errorf("partition %d of %s: it has partitions 0 to %d", only, topic, t.Partitions-1)}
	}
	for _, p := range parts {
		start, end := from, uint64(0)
		for first := true; ; first = false {
			page, err := api.Messages(ctx, topic, p, start, remotePage)
			if err != nil {
				return err
			}
			if first {
				end = page.End
			}
			delayed := false
			for _, m := range page.Messages {
				if m.Offset >= end {
					break
				}
				if m.NotBefore != nil && m.NotBefore.After(now) {
					// Not due: a reader of the log stops the partition
					// here (the API's browse shows it).
					pr.noteDelayed(topic, p, m.Offset, *m.NotBefore)
					delayed = true
					break
				}
				if err := print(m); err != nil {
					if errors.Is(err, errPrintedEnough) {
						return nil
					}
					return err
				}
			}
			if delayed || len(page.Messages) == 0 || page.Next >= end {
				break
			}
			start = strconv.FormatUint(page.Next, 10)
		}
	}
	return nil
}

// remotePage is how many messages runRemoteConsume asks for at a time.
const remotePage = 500

// runGroupConsume prints messages from the group's committed offsets and
// commits after each printed batch.
func runGroupConsume(ctx context.Context, g *globals, tel *telemetry, pr *printer, topic, group string, from startPoint, follow bool, max int) error {
	l, err := g.openDir(ctx, true, false, tel.logOpts()...)
	if err != nil {
		return err
	}
	defer tel.watchLog(l)()
	defer l.Close()
	t, err := l.Topic(topic)
	if err != nil {
		return usageError{err}
	}
	next := map[int32]uint64{}
	for p := range t.Partitions {
		if off, ok := l.CommittedOffset(group, topic, int32(p)); ok {
			next[int32(p)] = off
		} else if next[int32(p)], err = offsetIn(from, l, topic, int32(p)); err != nil {
			return err
		}
	}
	printed := 0
	for {
		progressed := false
		for p, off := range next {
			res, err := l.Read(topic, p, off, commitlog.ReadOpts{})
			if err != nil {
				return err
			}
			for _, m := range res.Messages {
				if err := pr.print(m); err != nil {
					return err
				}
				tel.countPrinted()
				printed++
				if max > 0 && printed >= max {
					return l.CommitOffsets(ctx, group, commitlog.Offset{Topic: topic, Partition: p, Offset: m.Offset + 1})
				}
			}
			if len(res.Messages) > 0 {
				if err := l.CommitOffsets(ctx, group, commitlog.Offset{Topic: topic, Partition: p, Offset: res.Next}); err != nil {
					return err
				}
				progressed = true
			}
			next[p] = res.Next
		}
		if progressed {
			continue
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
