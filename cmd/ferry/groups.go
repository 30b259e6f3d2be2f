package main

import (
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/admin"
)

func newGroupsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "groups", Short: "Consumer groups: committed offsets and lag, reset and delete"}
	list := &cobra.Command{
		Use:   "list",
		Short: "List groups with their total lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, false, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			groups, err := api.Groups(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), groups, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "GROUP\tPARTITIONS\tLAG\tMEMBERS")
				for _, t := range groups {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\n", t.Group, t.Partitions, t.Lag, t.Members)
				}
			})
		},
	}
	describe := &cobra.Command{
		Use:   "describe GROUP",
		Short: "Show a group's committed offset and lag per partition, and its live members",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, false, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			gr, err := api.Group(cmd.Context(), args[0])
			if errors.Is(err, admin.ErrNotFound) {
				return usageError{fmt.Errorf("no consumer group %q has committed offsets or members in %s", args[0], g.remote.where(g))}
			}
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), gr, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "TOPIC\tPARTITION\tCOMMITTED\tEND\tLAG")
				for _, r := range gr.Partitions {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\n", r.Topic, r.Partition, r.Committed, r.End, r.Lag)
				}
				if len(gr.Members) > 0 {
					fmt.Fprintf(w, "\nmembers\t%s\n", strings.Join(gr.Members, ", "))
				}
				for _, r := range gr.Running {
					fmt.Fprintf(w, "running here\t%s: %d partition(s), %d in flight, %d parked key(s)\n", r.Member, len(r.Owned), r.Stats.InFlight, r.Stats.ParkedKeys)
				}
			})
		},
	}
	var force bool
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a group's committed offsets (refused while it has live members, unless --force)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, true, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			if err := api.DeleteGroup(cmd.Context(), args[0], force); err != nil {
				return err
			}
			if _, err := api.Topic(cmd.Context(), args[0]+".dlq"); err == nil {
				// Its dead letters are an operator's to look at first.
				fmt.Fprintf(cmd.ErrOrStderr(), "ferry: its DLQ topic %s.dlq is left as it is: ferry dlq list -g %s; ferry topics delete %s.dlq\n", args[0], args[0], args[0])
			}
			return g.print(cmd.OutOrStdout(), admin.GroupDeleted{Group: args[0], Deleted: true}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "deleted group %s\n", args[0])
			})
		},
	}
	del.Flags().BoolVar(&force, "force", false, "delete although the group has live members (they would commit again)")
	cmd.AddCommand(list, describe, del, newGroupsResetCmd(g))
	return cmd
}
