package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/admin"
)

func newGroupsResetCmd(g *globals) *cobra.Command {
	var topic, to string
	var partition int
	var force bool
	cmd := &cobra.Command{
		Use:   "reset GROUP",
		Short: "Move a group's committed offsets (earliest, latest, an offset or a time); refused while it has live members unless --force",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if topic == "" {
				return usageError{fmt.Errorf("name the topic to reset with --topic")}
			}
			if _, err := parseFrom("--to", to, time.Now()); err != nil {
				return err
			}
			api, closeAPI, err := g.api(cmd.Context(), cmd, true, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			r := admin.Reset{Topic: topic, To: to, Force: force}
			if partition >= 0 {
				p := int32(partition)
				r.Partition = &p
			}
			rows, err := api.ResetGroup(cmd.Context(), args[0], r)
			if err != nil {
				return err
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
	cmd.Flags().BoolVar(&force, "force", false, "reset although the group has live members (they may commit over it)")
	return cmd
}

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
			if from == "" {
				// ParseStart takes "" as earliest; a script's empty
				// variable must not copy a whole topic.
				return usageError{fmt.Errorf("--from is empty: give where to start (%s)", admin.StartForms)}
			}
			if _, err := parseFrom("--from", from, now); err != nil {
				return err
			}
			if until != "" {
				if _, err := parseUntil(until, now); err != nil {
					return err
				}
			}
			if to == args[0] {
				return usageError{fmt.Errorf("--to must name another topic than %s", args[0])}
			}
			api, closeAPI, err := g.api(cmd.Context(), cmd, true, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			res, err := runReplay(cmd.Context(), api, admin.Replay{From: args[0], To: to, Start: from, Until: until}, cmd.ErrOrStderr())
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

// runReplay replays through api, and says on notes when it created the
// target.
func runReplay(ctx context.Context, api admin.API, r admin.Replay, notes io.Writer) (admin.ReplayResult, error) {
	res, err := api.Replay(ctx, r)
	if res.Created {
		fmt.Fprintf(notes, "ferry: created topic %s with %d partitions, as %s has\n", r.To, res.Partitions, r.From)
	}
	return res, err
}
