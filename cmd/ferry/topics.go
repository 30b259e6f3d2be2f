package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/commitlog"
)

// topicResult is what topics create and delete print with --json.
type topicResult struct {
	Topic      string `json:"topic"`
	Partitions int    `json:"partitions,omitempty"`
	Created    bool   `json:"created,omitempty"`
	Deleted    bool   `json:"deleted,omitempty"`
}

func newTopicsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "topics", Short: "Create, list, describe, alter and delete topics"}
	var cfg commitlog.TopicConfig
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a topic (and the data directory, if needed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Partitions < 1 || cfg.Partitions > commitlog.MaxPartitions {
				return usageError{fmt.Errorf("--partitions %d: want 1 to %d", cfg.Partitions, commitlog.MaxPartitions)}
			}
			if cfg.RetentionAge < 0 || cfg.RetentionBytes < 0 {
				return usageError{fmt.Errorf("--retention and --retention-bytes: want 0 (keep) or more")}
			}
			api, closeAPI, err := g.api(cmd.Context(), cmd, true, true)
			if err != nil {
				return err
			}
			defer closeAPI()
			ct := admin.CreateTopic{Name: args[0], Partitions: cfg.Partitions, RetentionBytes: cfg.RetentionBytes, Compact: cfg.Compact}
			if cfg.RetentionAge > 0 {
				ct.Retention = cfg.RetentionAge.String()
			}
			if _, err := api.CreateTopic(cmd.Context(), ct); err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), topicResult{Topic: args[0], Partitions: cfg.Partitions, Created: true}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "created topic %s with %d partition(s)\n", args[0], cfg.Partitions)
			})
		},
	}
	create.Flags().IntVar(&cfg.Partitions, "partitions", 1, "number of partitions")
	create.Flags().DurationVar(&cfg.RetentionAge, "retention", 0, "delete messages older than this (0: keep)")
	create.Flags().Int64Var(&cfg.RetentionBytes, "retention-bytes", 0, "bound each partition's size (0: unbounded)")
	create.Flags().BoolVar(&cfg.Compact, "compact", false, "keep only the latest message per key")

	list := &cobra.Command{
		Use:   "list",
		Short: "List topics",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, false, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			topics, err := api.Topics(cmd.Context())
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), topics, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "TOPIC\tPARTITIONS\tMESSAGES\tBYTES")
				for _, t := range topics {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\n", t.Name, t.Partitions, t.Messages, t.Bytes)
				}
			})
		},
	}
	describe := &cobra.Command{
		Use:   "describe NAME",
		Short: "Show a topic's configuration and partitions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, false, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			t, err := api.Topic(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), t, func(w *tabwriter.Writer) {
				or := func(s, none string) string {
					if s == "" {
						return none
					}
					return s
				}
				fmt.Fprintf(w, "topic\t%s\nretention\t%s\nretention bytes\t%d\ncompact\t%v\ndedup window\t%s\nmessages\t%d\nbytes\t%d\n\n",
					t.Name, or(t.Retention, "forever"), t.RetentionBytes, t.Compact, or(t.DedupWindow, "default"), t.Messages, t.Bytes)
				fmt.Fprintln(w, "PARTITION\tSTART\tEND")
				for _, p := range t.Bounds {
					fmt.Fprintf(w, "%d\t%d\t%d\n", p.Partition, p.Start, p.End)
				}
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a topic and its consumer offsets",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			api, closeAPI, err := g.api(cmd.Context(), cmd, true, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			if err := api.DeleteTopic(cmd.Context(), args[0]); err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), topicResult{Topic: args[0], Deleted: true}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "deleted topic %s\n", args[0])
			})
		},
	}
	var alterRetention time.Duration
	var alterBytes int64
	var alterPartitions int
	alter := &cobra.Command{
		Use:   "alter NAME",
		Short: "Change a topic's retention (--retention, --retention-bytes)",
		Long: `alter changes a topic's retention: --retention (a duration; 0 keeps
messages forever) and --retention-bytes (per partition; 0: unbounded). The
cleaner applies it on its next pass.

The partition count is fixed at creation: each key maps to a partition by
it, so changing it would break the order of every key. To grow a topic,
create one with more partitions and replay into it (ferry replay).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f := cmd.Flags()
			if f.Changed("partitions") {
				return usageError{fmt.Errorf("--partitions %d: a topic's partition count is fixed at creation (keys map to partitions by it, so a change would break each key's order); create one with %d partitions and replay into it: ferry topics create NEW --partitions %d && ferry replay %s --from earliest --to NEW", alterPartitions, alterPartitions, alterPartitions, args[0])}
			}
			var a admin.AlterTopic
			if f.Changed("retention") {
				if alterRetention < 0 {
					return usageError{fmt.Errorf("--retention %s: want 0 (keep forever) or more", alterRetention)}
				}
				v := alterRetention.String()
				a.Retention = &v
			}
			if f.Changed("retention-bytes") {
				if alterBytes < 0 {
					return usageError{fmt.Errorf("--retention-bytes %d: want 0 (unbounded) or more", alterBytes)}
				}
				a.RetentionBytes = &alterBytes
			}
			if a.Retention == nil && a.RetentionBytes == nil {
				return usageError{fmt.Errorf("name what changes: --retention or --retention-bytes")}
			}
			api, closeAPI, err := g.api(cmd.Context(), cmd, true, false)
			if err != nil {
				return err
			}
			defer closeAPI()
			t, err := api.AlterTopic(cmd.Context(), args[0], a)
			if err != nil {
				return err
			}
			return g.print(cmd.OutOrStdout(), t, func(w *tabwriter.Writer) {
				ret := t.Retention
				if ret == "" {
					ret = "forever"
				}
				fmt.Fprintf(w, "altered topic %s: retention %s, retention bytes %d\n", t.Name, ret, t.RetentionBytes)
			})
		},
	}
	alter.Flags().DurationVar(&alterRetention, "retention", 0, "delete messages older than this (0: keep)")
	alter.Flags().Int64Var(&alterBytes, "retention-bytes", 0, "bound each partition's size (0: unbounded)")
	alter.Flags().IntVar(&alterPartitions, "partitions", 0, "refused: the partition count is fixed at creation (see the help)")
	cmd.AddCommand(create, list, describe, alter, del)
	return cmd
}
