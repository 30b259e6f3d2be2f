package main

import (
	"fmt"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newGroupsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "groups", Short: "Consumer groups: committed offsets and lag"}
	type row struct {
		Group     string `json:"group"`
		Topic     string `json:"topic"`
		Partition int32  `json:"partition"`
		Committed uint64 `json:"committed"`
		End       uint64 `json:"end"`
		Lag       uint64 `json:"lag"`
	}
	rows := func(cmd *cobra.Command, only string) ([]row, error) {
		l, err := g.open(cmd.Context(), false)
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out := []row{}
		for group, offs := range l.Groups() {
			if only != "" && group != only {
				continue
			}
			for _, o := range offs {
				_, end, err := l.Bounds(o.Topic, o.Partition)
				if err != nil {
					continue
				}
				lag := uint64(0)
				if end > o.Offset {
					lag = end - o.Offset
				}
				out = append(out, row{group, o.Topic, o.Partition, o.Offset, end, lag})
			}
		}
		sort.Slice(out, func(i, j int) bool {
			a, b := out[i], out[j]
			return a.Group < b.Group || a.Group == b.Group && (a.Topic < b.Topic || a.Topic == b.Topic && a.Partition < b.Partition)
		})
		if only != "" && len(out) == 0 {
			return nil, usageError{fmt.Errorf("no consumer group %q has committed offsets in %s", only, g.dir)}
		}
		return out, nil
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List groups with their total lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rs, err := rows(cmd, "")
			if err != nil {
				return err
			}
			type total struct {
				Group      string `json:"group"`
				Partitions int    `json:"partitions"`
				Lag        uint64 `json:"lag"`
			}
			totals := []total{}
			for _, r := range rs {
				if n := len(totals); n == 0 || totals[n-1].Group != r.Group {
					totals = append(totals, total{Group: r.Group})
				}
				totals[len(totals)-1].Partitions++
				totals[len(totals)-1].Lag += r.Lag
			}
			return g.print(cmd.OutOrStdout(), totals, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "GROUP\tPARTITIONS\tLAG")
				for _, t := range totals {
					fmt.Fprintf(w, "%s\t%d\t%d\n", t.Group, t.Partitions, t.Lag)
				}
			})
		},
	}
	describe := &cobra.Command{
		Use:   "describe GROUP",
		Short: "Show a group's committed offset and lag per partition",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			rs, err := rows(cmd, args[0])
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), rs, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "TOPIC\tPARTITION\tCOMMITTED\tEND\tLAG")
				for _, r := range rs {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\n", r.Topic, r.Partition, r.Committed, r.End, r.Lag)
				}
			})
		},
	}
	cmd.AddCommand(list, describe, newGroupsResetCmd(g))
	return cmd
}
