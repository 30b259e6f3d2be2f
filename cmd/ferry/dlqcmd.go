package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
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
	group, topic, class, key, since, state string
	limit                                  int
}

// addQueue adds the flags that name the DLQ.
func (f *dlqFlags) addQueue(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&f.group, "group", "g", "", "consumer group (its DLQ is GROUP.dlq)")
	cmd.Flags().StringVar(&f.topic, "dlq-topic", "", "the DLQ topic, if not GROUP.dlq")
}

// add adds the flags that name the DLQ and select entries.
func (f *dlqFlags) add(cmd *cobra.Command) {
	f.addQueue(cmd)
	cmd.Flags().StringVar(&f.class, "class", "", "only entries of this failure class: "+strings.Join(classNames, ", "))
	cmd.Flags().StringVar(&f.key, "key", "", "only entries of this message key")
	cmd.Flags().StringVar(&f.since, "since", "", "only entries that last failed after this: a duration ago (1h) or an RFC 3339 time")
}

// classNames are the failure classes an entry can have.
var classNames = []string{string(retry.ClassTransient), string(retry.ClassPermanent), string(retry.ClassDecode), string(retry.ClassTimeout),
	string(retry.ClassPanic), string(dlq.ClassParked), string(dlq.ClassScheduled)}

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
	if f.class != "" && !slices.Contains(classNames, f.class) {
		return flt, usageError{fmt.Errorf("--class %q: want one of %s", f.class, strings.Join(classNames, ", "))}
	}
	flt.Class = retry.Class(f.class)
	switch f.state {
	case "", dlq.StateDead, dlq.StateRequested, dlq.StateRedriven, dlq.StatePurged:
		flt.State = f.state
	default:
		return flt, usageError{fmt.Errorf("--state %q: want dead, requested, redriven or purged", f.state)}
	}
	if f.limit < 0 {
		return flt, usageError{fmt.Errorf("--limit %d: want 0 (no limit) or more", f.limit)}
	}
	if f.key != "" {
		flt.Key = []byte(f.key)
	}
	if f.since != "" {
		t, _, ok := timeOrAgo(f.since, time.Now())
		if !ok {
			return flt, usageError{fmt.Errorf("--since %q: want a duration like 1h or an RFC 3339 time", f.since)}
		}
		flt.Since = t
	}
	return flt, nil
}

// errNoDLQ: the DLQ topic does not exist yet (nothing was dead-lettered).
var errNoDLQ = errors.New("no dead letters yet")

// withQueue opens the directory and the DLQ and runs fn. A DLQ topic that
// does not exist yet returns errNoDLQ: its consumer creates it when it
// starts, so there is nothing in it.
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
	if _, err := l.Topic(topic); errors.Is(err, ferry.ErrTopicNotFound) {
		return fmt.Errorf("%w: the DLQ topic %q does not exist (a consumer of the group creates it when it starts)", errNoDLQ, topic)
	} else if err != nil {
		return err
	}
	b := embedded.New(l)
	defer b.Close()
	return fn(l, dlq.Open(b, topic), flt)
}

// nothingYet reports errNoDLQ as an empty result (exit 0): empty is
// printed as JSON, the reason as text.
func nothingYet(g *globals, w io.Writer, err error, empty any) error {
	if !errors.Is(err, errNoDLQ) {
		return err
	}
	return g.print(w, empty, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, err) })
}

func newDLQCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "List, show, redrive and purge dead letters"}
	var lf dlqFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List unresolved entries (dead, or requested for their consumer to handle)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := withQueue(cmd.Context(), g, &lf, false, func(_ *commitlog.Log, q *dlq.Queue, flt dlq.Filter) error {
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
				if lf.limit > 0 && len(entries) > lf.limit {
					entries = entries[:lf.limit]
				}
				rows := []row{}
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
			return nothingYet(g, cmd.OutOrStdout(), err, []any{})
		},
	}
	lf.add(list)
	list.Flags().StringVar(&lf.state, "state", "", "only entries in this state: dead, requested (the default lists both), redriven or purged")
	list.Flags().IntVar(&lf.limit, "limit", 0, "at most this many entries, oldest first (0: all)")

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
			err = withQueue(cmd.Context(), g, &sf, false, func(_ *commitlog.Log, q *dlq.Queue, _ dlq.Filter) error {
				e, err := q.Get(cmd.Context(), id)
				if err != nil {
					return usageError{err}
				}
				type shown struct {
					ID           string `json:"id"`
					State        string `json:"state"`
					Topic        string `json:"topic"`
					Partition    int32  `json:"partition"`
					Offset       uint64 `json:"offset"`
					Key          string `json:"key"`
					Payload      string `json:"payload"`
					Group        string `json:"group"`
					Handler      string `json:"handler"`
					Attempts     int    `json:"attempts"`
					FirstFailure string `json:"first_failure"`
					LastFailure  string `json:"last_failure"`
					Class        string `json:"class"`
					Error        string `json:"error"`
					Reason       string `json:"reason"`
					Stack        string `json:"stack,omitempty"`
				}
				out := shown{e.Original.ID.String(), e.State, e.Original.Topic, e.Original.Partition, e.Original.Offset, string(e.Original.Key), string(e.Original.Payload),
					e.Group, e.Handler, e.Attempts, e.FirstFailure.UTC().Format(time.RFC3339), e.LastFailure.UTC().Format(time.RFC3339), string(e.Class), e.Error, e.Reason, e.Stack}
				return g.print(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
					fmt.Fprintf(w, "id\t%s\nstate\t%s\nsource\t%s/%d@%d\nkey\t%s\npayload\t%s\ngroup\t%s\nhandler\t%s\nattempts\t%d\n",
						out.ID, out.State, out.Topic, out.Partition, out.Offset, out.Key, out.Payload, out.Group, out.Handler, out.Attempts)
					fmt.Fprintf(w, "first failure\t%s\nlast failure\t%s\nclass\t%s\nerror\t%s\nreason\t%s\n", out.FirstFailure, out.LastFailure, out.Class, out.Error, out.Reason)
					if e.Stack != "" {
						fmt.Fprintf(w, "stack\t\n%s\n", e.Stack)
					}
				})
			})
			if errors.Is(err, errNoDLQ) {
				return usageError{fmt.Errorf("entry %s: %w", id, err)}
			}
			return err
		},
	}
	sf.addQueue(show)

	var rf dlqFlags
	var to string
	var perSecond float64
	redrive := &cobra.Command{
		Use:   "redrive",
		Short: "Have dead entries handled again by their partition's consumer (or move them --to a topic), whole keys in order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			result := redriveResult{To: to}
			err := withQueue(cmd.Context(), g, &rf, true, func(_ *commitlog.Log, q *dlq.Queue, flt dlq.Filter) error {
				out := cmd.OutOrStdout()
				if g.json {
					out = io.Discard // progress is for people
				}
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
				result.Entries = n
				return g.print(cmd.OutOrStdout(), result, func(w *tabwriter.Writer) {
					if to != "" {
						fmt.Fprintf(w, "moved %d entries to %q\n", n, to)
					} else {
						fmt.Fprintf(w, "requested %d entries: each partition's consumer handles them in key order (now, or when it starts)\n", n)
					}
				})
			})
			return nothingYet(g, cmd.OutOrStdout(), err, result)
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
			var result struct {
				Purged int `json:"purged"`
			}
			err := withQueue(cmd.Context(), g, &pf, true, func(_ *commitlog.Log, q *dlq.Queue, flt dlq.Filter) error {
				n, err := q.Purge(cmd.Context(), flt)
				if err != nil {
					return err
				}
				result.Purged = n
				return g.print(cmd.OutOrStdout(), result, func(w *tabwriter.Writer) { fmt.Fprintf(w, "purged %d entries\n", n) })
			})
			return nothingYet(g, cmd.OutOrStdout(), err, result)
		},
	}
	pf.add(purge)
	cmd.AddCommand(list, show, redrive, purge)
	return cmd
}

// redriveResult is what dlq redrive did.
type redriveResult struct {
	Entries int    `json:"entries"`      // requested (or moved, with To)
	To      string `json:"to,omitempty"` // the topic entries were moved to
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
