package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/retry"
)

type dlqFlags struct {
	group, topic, class, key, since string
}

func (f *dlqFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.group, "group", "g", "", "consumer group (its DLQ is GROUP.dlq)")
	cmd.Flags().StringVar(&f.topic, "dlq-topic", "", "the DLQ topic, if not GROUP.dlq")
	cmd.Flags().StringVar(&f.class, "class", "", "only entries of this failure class (transient, permanent, decode, timeout, panic, parked)")
	cmd.Flags().StringVar(&f.key, "key", "", "only entries of this message key")
	cmd.Flags().StringVar(&f.since, "since", "", "only entries that last failed after this: a duration ago (1h) or an RFC 3339 time")
}

func (f *dlqFlags) queueTopic() (string, error) {
	switch {
	case f.topic != "":
		return f.topic, nil
	case f.group != "":
		return f.group + ".dlq", nil
	}
	return "", usageError{fmt.Errorf("name the consumer group (--group) or the DLQ topic (--dlq-topic)")}
}

func (f *dlqFlags) filter() (dlq.Filter, error) {
	var flt dlq.Filter
	switch retry.Class(f.class) {
	case "", retry.ClassTransient, retry.ClassPermanent, retry.ClassDecode, retry.ClassTimeout, retry.ClassPanic, dlq.ClassParked:
		flt.Class = retry.Class(f.class)
	default:
		return flt, usageError{fmt.Errorf("--class %q: want transient, permanent, decode, timeout, panic or parked", f.class)}
	}
	if f.key != "" {
		flt.Key = []byte(f.key)
	}
	if f.since != "" {
		if d, err := time.ParseDuration(f.since); err == nil {
			flt.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, f.since); err == nil {
			flt.Since = t
		} else {
			return flt, usageError{fmt.Errorf("--since %q: want a duration like 1h or an RFC 3339 time", f.since)}
		}
	}
	return flt, nil
}

// withQueue opens the directory and the DLQ and runs fn.
func withQueue(ctx context.Context, g *globals, f *dlqFlags, write bool, fn func(*commitlog.Log, *dlq.Queue, dlq.Filter) error) error {
	topic, err := f.queueTopic()
	if err != nil {
		return err
	}
	flt, err := f.filter()
	if err != nil {
		return err
	}
	l, err := g.open(ctx, write)
	if err != nil {
		return err
	}
	defer l.Close()
	if _, err := l.Topic(topic); err != nil {
		return usageError{fmt.Errorf("dead-letter topic %q: %w", topic, err)}
	}
	b := embedded.New(l)
	defer b.Close()
	return fn(l, dlq.Open(b, topic), flt)
}

func newDLQCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "List, show, redrive and purge dead letters"}
	var lf dlqFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List unresolved entries (dead, or requested for their consumer to handle)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withQueue(cmd.Context(), g, &lf, false, func(_ *commitlog.Log, q *dlq.Queue, flt dlq.Filter) error {
				entries, err := q.List(cmd.Context(), flt)
				if err != nil {
					return err
				}
				type row struct {
					ID          string `json:"id"`
					Topic       string `json:"topic"`
					Partition   int32  `json:"partition"`
					Offset      uint64 `json:"offset"`
					Key         string `json:"key"`
					Class       string `json:"class"`
					State       string `json:"state"`
					Attempts    int    `json:"attempts"`
					LastFailure string `json:"last_failure"`
					Error       string `json:"error"`
				}
				var rows []row
				for _, e := range entries {
					rows = append(rows, row{e.Original.ID.String(), e.Original.Topic, e.Original.Partition, e.Original.Offset, string(e.Original.Key),
						string(e.Class), e.State, e.Attempts, e.LastFailure.UTC().Format(time.RFC3339), e.Error})
				}
				return g.print(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) {
					fmt.Fprintln(w, "ID\tSOURCE\tKEY\tCLASS\tSTATE\tATTEMPTS\tLAST FAILURE\tERROR")
					for _, r := range rows {
						fmt.Fprintf(w, "%s\t%s/%d@%d\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.Topic, r.Partition, r.Offset, r.Key, r.Class, r.State, r.Attempts, r.LastFailure, firstLine(r.Error))
					}
				})
			})
		},
	}
	lf.add(list)

	var sf dlqFlags
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Show one dead letter: the original message and why it failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := ferry.ParseID(args[0])
			if err != nil {
				return usageError{err}
			}
			return withQueue(cmd.Context(), g, &sf, false, func(_ *commitlog.Log, q *dlq.Queue, _ dlq.Filter) error {
				e, err := q.Get(cmd.Context(), id)
				if err != nil {
					return usageError{err}
				}
				out := map[string]any{"id": e.Original.ID.String(), "state": e.State, "source": fmt.Sprintf("%s/%d@%d", e.Original.Topic, e.Original.Partition, e.Original.Offset),
					"key": string(e.Original.Key), "payload": string(e.Original.Payload), "group": e.Group, "handler": e.Handler, "attempts": e.Attempts,
					"first_failure": e.FirstFailure.UTC(), "last_failure": e.LastFailure.UTC(), "class": string(e.Class), "error": e.Error, "reason": e.Reason, "stack": e.Stack}
				return g.print(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
					for _, k := range []string{"id", "state", "source", "key", "payload", "group", "handler", "attempts", "first_failure", "last_failure", "class", "error", "reason"} {
						fmt.Fprintf(w, "%s\t%v\n", k, out[k])
					}
					if e.Stack != "" {
						fmt.Fprintf(w, "stack\t\n%s\n", e.Stack)
					}
				})
			})
		},
	}
	sf.add(show)

	var rf dlqFlags
	var to string
	var perSecond float64
	redrive := &cobra.Command{
		Use:   "redrive",
		Short: "Have dead entries handled again by their partition's consumer (or move them --to a topic), whole keys in order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withQueue(cmd.Context(), g, &rf, true, func(_ *commitlog.Log, q *dlq.Queue, flt dlq.Filter) error {
				out := cmd.OutOrStdout()
				verb := "requested"
				if to != "" {
					verb = "moved"
				}
				var bar *progressbar.ProgressBar
				opts := dlq.RedriveOpts{Filter: flt, To: to, PerSecond: perSecond, Progress: func(done, total int) {
					if isTerminal(out) {
						if bar == nil {
							bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(out), progressbar.OptionSetDescription("redriving"),
								progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true))
						}
						bar.Set(done)
					} else if done == total || done%1000 == 0 {
						fmt.Fprintf(out, "%s %d/%d\n", verb, done, total)
					}
				}}
				n, err := q.Redrive(cmd.Context(), opts)
				if bar != nil {
					bar.Finish()
					fmt.Fprintln(out)
				}
				if err != nil {
					return fmt.Errorf("after %d redriven: %w", n, err)
				}
				if to != "" {
					fmt.Fprintf(out, "moved %d entries to %q\n", n, to)
				} else {
					fmt.Fprintf(out, "requested %d entries: each partition's consumer handles them in key order (now, or when it starts)\n", n)
				}
				return nil
			})
		},
	}
	rf.add(redrive)
	redrive.Flags().StringVar(&to, "to", "", "send to this topic instead of each entry's source topic")
	redrive.Flags().Float64Var(&perSecond, "rate", 0, "at most this many entries per second (0: unlimited)")

	var pf dlqFlags
	purge := &cobra.Command{
		Use:   "purge",
		Short: "Mark dead entries purged (they no longer list or redrive)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withQueue(cmd.Context(), g, &pf, true, func(_ *commitlog.Log, q *dlq.Queue, flt dlq.Filter) error {
				n, err := q.Purge(cmd.Context(), flt)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "purged %d entries\n", n)
				return nil
			})
		},
	}
	pf.add(purge)
	cmd.AddCommand(list, show, redrive, purge)
	return cmd
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
