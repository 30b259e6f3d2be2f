package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

func newConsumeCmd(g *globals, name string, follow bool, from string) *cobra.Command {
	var partition, max int
	var group, metricsAddr string
	short := "Print a topic's messages"
	if follow {
		short = "Follow a topic from its end (consume --follow --from latest)"
	}
	cmd := &cobra.Command{
		Use:   name + " TOPIC",
		Short: short,
		Long: `consume prints messages of a topic (all partitions, or --partition) from
--from (earliest, latest, an offset, or an RFC 3339 time). With --follow it
waits for new messages, also while another process owns the directory.
With --group it reads from the group's committed offsets (or --from where
it has none) and commits what it printed; this needs the directory to
itself. tail is consume --follow --from latest.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tel, err := startTelemetry(metricsAddr, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer tel.close()
			if group != "" {
				return runGroupConsume(cmd.Context(), g, tel, cmd.OutOrStdout(), args[0], group, from, follow, max)
			}
			return runConsume(cmd.Context(), g, tel, cmd.OutOrStdout(), args[0], int32(partition), from, follow, max)
		},
	}
	cmd.Flags().StringVarP(&group, "group", "g", "", "consume as this group: resume from its offsets and commit them")
	cmd.Flags().IntVarP(&partition, "partition", "p", -1, "only this partition")
	cmd.Flags().StringVar(&from, "from", from, "earliest, latest, an offset, or an RFC 3339 time")
	cmd.Flags().BoolVarP(&follow, "follow", "f", follow, "keep waiting for new messages")
	cmd.Flags().IntVarP(&max, "max", "n", 0, "stop after this many messages (0: no limit)")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this address (host:port)")
	return cmd
}

type jsonMessage struct {
	ID        string            `json:"id"`
	Topic     string            `json:"topic"`
	Partition int32             `json:"partition"`
	Offset    uint64            `json:"offset"`
	Time      time.Time         `json:"time"`
	Key       string            `json:"key,omitempty"`
	Headers   map[string]string `json:"headers,omitempty"`
	Payload   string            `json:"payload"`
}

func printMessage(w io.Writer, asJSON bool, m *ferry.Message) {
	if asJSON {
		jm := jsonMessage{ID: m.ID.String(), Topic: m.Topic, Partition: m.Partition, Offset: m.Offset, Time: m.Time.UTC(), Key: string(m.Key), Payload: string(m.Payload)}
		if len(m.Headers) > 0 {
			jm.Headers = map[string]string{}
			for _, h := range m.Headers {
				jm.Headers[h.Key] = string(h.Value)
			}
		}
		b, _ := json.Marshal(jm)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	fmt.Fprintf(w, "%s/%d@%d\t%s\t%s\n", m.Topic, m.Partition, m.Offset, m.Key, m.Payload)
}

// runConsume reads the log read-only; to follow, it reopens the directory
// when it reaches the end, so it sees what the owning process appended.
func runConsume(ctx context.Context, g *globals, tel *telemetry, w io.Writer, topic string, only int32, from string, follow bool, max int) error {
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
		off, err := parseStart(l, topic, int32(p), from)
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
					next[p] = start // retention moved past us
					continue
				}
			}
			if err != nil {
				l.Close()
				return err
			}
			for _, m := range res.Messages {
				printMessage(w, g.json, m)
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

// runGroupConsume prints messages from the group's committed offsets and
// commits after each printed batch.
func runGroupConsume(ctx context.Context, g *globals, tel *telemetry, w io.Writer, topic, group, from string, follow bool, max int) error {
	l, err := g.openDir(ctx, true, false, tel.logOpts()...)
	if err != nil {
		return err
	}
	defer tel.check("log", l.Healthy)()
	defer l.Close()
	t, err := l.Topic(topic)
	if err != nil {
		return usageError{err}
	}
	next := map[int32]uint64{}
	for p := range t.Partitions {
		if off, ok := l.CommittedOffset(group, topic, int32(p)); ok {
			next[int32(p)] = off
		} else if next[int32(p)], err = parseStart(l, topic, int32(p), from); err != nil {
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
				printMessage(w, g.json, m)
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
