package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
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
	cmd.Flags().StringVar(&f.class, "class", "", "only entries of this failure class: "+strings.Join(admin.Classes, ", "))
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

// filter is the API's filter of the flags; it is checked where it is
// parsed (admin.Filter.Parse), the same here and on a server.
func (f *dlqFlags) filter() (admin.Filter, error) {
	if f.limit < 0 {
		return admin.Filter{}, usageError{fmt.Errorf("--limit %d: want 0 (no limit) or more", f.limit)}
	}
	flt := admin.Filter{Class: f.class, Key: f.key, Since: f.since, State: f.state}
	if _, err := flt.Parse(time.Now()); err != nil {
		return flt, usageError{err}
	}
	return flt, nil
}

// withQueue runs fn with the API (over --dir, --nats, --kafka or
// --server), the DLQ topic and the filter. A DLQ topic that does not
// exist yet is errNoDLQ: its consumer creates it when it starts, so there
// is nothing in it.
func withQueue(ctx context.Context, cmd *cobra.Command, g *globals, f *dlqFlags, write bool, fn func(admin.API, string, admin.Filter) error) error {
	topic, err := f.queueTopic()
	if err != nil {
		return err
	}
	flt, err := f.filter()
	if err != nil {
		return err
	}
	api, closeAPI, err := g.api(ctx, cmd, write, false)
	if err != nil {
		return err
	}
	defer closeAPI()
	err = fn(api, topic, flt)
	if errors.Is(err, admin.ErrNoDLQ) {
		return fmt.Errorf("%w: the DLQ topic %q does not exist (a consumer of the group creates it when it starts)", errNoDLQ, topic)
	}
	return err
}

// errNoDLQ: the DLQ topic does not exist yet (nothing was dead-lettered).
var errNoDLQ = errors.New("no dead letters yet")

// nothingYet reports errNoDLQ as an empty result (exit 0): empty is
// printed as JSON, the reason as text.
func nothingYet(g *globals, w io.Writer, err error, empty any) error {
	if !errors.Is(err, errNoDLQ) {
		return err
	}
	return g.print(w, empty, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, err) })
}

// listDeadLetters returns the first limit entries of queue matching flt
// (0: every one), page by page.
func listDeadLetters(ctx context.Context, api admin.API, queue string, flt admin.Filter, limit int) ([]admin.DeadLetter, error) {
	out := []admin.DeadLetter{}
	page := admin.Page{}
	for {
		page.Limit = admin.MaxLimit
		if limit > 0 {
			page.Limit = min(admin.MaxLimit, limit-len(out))
		}
		rows, err := api.DeadLetters(ctx, queue, flt, page)
		if err != nil {
			return nil, err
		}
		out = append(out, rows...)
		if len(rows) < page.Limit || len(out) == limit {
			return out, nil
		}
		page.After = rows[len(rows)-1].Position
	}
}

func newDLQCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "List, show, redrive and purge dead letters (of --dir, --nats, --kafka or a --server)"}
	var lf dlqFlags
	list := &cobra.Command{
		Use:   "list",
		Short: "List unresolved entries (dead, or requested for their consumer to handle)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			err := withQueue(cmd.Context(), cmd, g, &lf, false, func(api admin.API, queue string, flt admin.Filter) error {
				rows, err := listDeadLetters(cmd.Context(), api, queue, flt, lf.limit)
				if err != nil {
					return err
				}
				return g.print(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) {
					fmt.Fprintln(w, "ID\tSOURCE\tKEY\tCLASS\tSTATE\tATTEMPTS\tLAST FAILURE\tERROR")
					for _, r := range rows {
						fmt.Fprintf(w, "%s\t%s/%d@%d\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, r.Topic, r.Partition, r.Offset, r.Key, r.Class, r.State, r.Attempts,
							r.LastFailure.Format(time.RFC3339), firstLine(r.Error))
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
			if _, err := ferry.ParseID(args[0]); err != nil {
				return usageError{err}
			}
			err := withQueue(cmd.Context(), cmd, g, &sf, false, func(api admin.API, queue string, _ admin.Filter) error {
				e, err := api.DeadLetter(cmd.Context(), queue, args[0])
				if err != nil {
					return err
				}
				return g.print(cmd.OutOrStdout(), e, func(w *tabwriter.Writer) {
					key, payload := e.Key, ""
					if e.Message != nil {
						payload = e.Message.Payload
						if e.Message.Encoding == admin.EncodingBase64 {
							payload += " (base64)"
						}
					}
					fmt.Fprintf(w, "id\t%s\nstate\t%s\nsource\t%s/%d@%d\nkey\t%s\npayload\t%s\ngroup\t%s\nhandler\t%s\nattempts\t%d\n",
						e.ID, e.State, e.Topic, e.Partition, e.Offset, key, payload, e.Group, e.Handler, e.Attempts)
					fmt.Fprintf(w, "first failure\t%s\nlast failure\t%s\nclass\t%s\nerror\t%s\nreason\t%s\n",
						e.FirstFailure.Format(time.RFC3339), e.LastFailure.Format(time.RFC3339), e.Class, e.Error, e.Reason)
					if e.RetryAt != nil {
						fmt.Fprintf(w, "retry at\t%s\n", e.RetryAt.Format(time.RFC3339))
					}
					if e.Stack != "" {
						fmt.Fprintf(w, "stack\t\n%s\n", e.Stack)
					}
				})
			})
			if errors.Is(err, errNoDLQ) {
				return usageError{fmt.Errorf("entry %s: %w", args[0], err)}
			}
			return err
		},
	}
	sf.addQueue(show)

	var rf dlqFlags
	var to string
	var requested bool
	var perSecond float64
	redrive := &cobra.Command{
		Use:   "redrive",
		Short: "Have dead entries handled again by their partition's consumer (or move them --to a topic), whole keys in order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			result := admin.RedriveResult{To: to}
			err := withQueue(cmd.Context(), cmd, g, &rf, true, func(api admin.API, queue string, flt admin.Filter) error {
				out := cmd.OutOrStdout()
				if g.json {
					out = io.Discard // progress is for people
				}
				verb := "requested"
				if to != "" {
					verb = "moved"
				}
				var bar *progressbar.ProgressBar
				progress := func(p admin.Progress) {
					if isTerminal(out) {
						if bar == nil {
							bar = progressbar.NewOptions(p.Total, progressbar.OptionSetWriter(out), progressbar.OptionSetDescription("redriving"),
								progressbar.OptionShowCount(), progressbar.OptionSetPredictTime(true))
						}
						bar.Set(p.Done)
					} else if p.Done == p.Total || p.Done%1000 == 0 {
						fmt.Fprintf(out, "%s %d/%d\n", verb, p.Done, p.Total)
					}
				}
				if requested && to == "" {
					return usageError{fmt.Errorf("--requested is for a move (--to): back to the source, requested entries are their owner's already")}
				}
				res, err := api.Redrive(cmd.Context(), queue, admin.Redrive{Filter: flt, To: to, IncludeRequested: requested, PerSecond: perSecond}, progress)
				if bar != nil {
					bar.Finish()
					fmt.Fprintln(out)
				}
				if err != nil {
					return err
				}
				result = res
				return g.print(cmd.OutOrStdout(), result, func(w *tabwriter.Writer) {
					if to != "" {
						fmt.Fprintf(w, "moved %d entries to %q\n", res.Entries, to)
						if res.Left > 0 {
							fmt.Fprintf(w, "left %d entries: their keys are requested, for their consumer to handle; --requested moves them too, if that consumer does not run\n", res.Left)
						}
					} else {
						fmt.Fprintf(w, "requested %d entries: each partition's consumer handles them in key order (now, or when it starts)\n", res.Entries)
					}
				})
			})
			return nothingYet(g, cmd.OutOrStdout(), err, result)
		},
	}
	rf.add(redrive)
	redrive.Flags().StringVar(&to, "to", "", "send to this topic instead of each entry's source topic")
	redrive.Flags().Float64Var(&perSecond, "rate", 0, "at most this many entries per second (0: unlimited)")
	redrive.Flags().BoolVar(&requested, "requested", false, "with --to: also move entries already requested, which their consumer may be handling (only when it does not run: else they may be handled twice)")

	var pf dlqFlags
	purge := &cobra.Command{
		Use:   "purge",
		Short: "Mark dead entries purged (they no longer list or redrive)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var result admin.PurgeResult
			err := withQueue(cmd.Context(), cmd, g, &pf, true, func(api admin.API, queue string, flt admin.Filter) error {
				res, err := api.Purge(cmd.Context(), queue, admin.Purge{Filter: flt})
				if err != nil {
					return err
				}
				result = res
				return g.print(cmd.OutOrStdout(), result, func(w *tabwriter.Writer) { fmt.Fprintf(w, "purged %d entries\n", res.Purged) })
			})
			return nothingYet(g, cmd.OutOrStdout(), err, result)
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
