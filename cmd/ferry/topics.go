package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

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
	cmd := &cobra.Command{Use: "topics", Short: "Create, list, describe and delete topics"}
	var cfg commitlog.TopicConfig
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a topic (and the data directory, if needed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Partitions < 1 || cfg.Partitions > commitlog.MaxPartitions {
				return usageError{fmt.Errorf("--partitions %d: want 1 to %d", cfg.Partitions, commitlog.MaxPartitions)}
			}
			l, err := g.openDir(cmd.Context(), true, true)
			if err != nil {
				return err
			}
			defer l.Close()
			if err := l.CreateTopic(cmd.Context(), args[0], cfg); err != nil {
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
			l, err := g.open(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer l.Close()
			topics := l.Topics()
			type row struct {
				Name       string `json:"name"`
				Partitions int    `json:"partitions"`
				Messages   uint64 `json:"messages"`
				Bytes      int64  `json:"bytes"`
			}
			rows := []row{}
			for _, t := range topics {
				r := row{Name: t.Name, Partitions: len(t.Partitions)}
				for _, p := range t.Partitions {
					r.Messages += p.End - p.Start
					r.Bytes += p.Bytes
				}
				rows = append(rows, r)
			}
			return g.print(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) {
				fmt.Fprintln(w, "TOPIC\tPARTITIONS\tMESSAGES\tBYTES")
				for _, r := range rows {
					fmt.Fprintf(w, "%s\t%d\t%d\t%d\n", r.Name, r.Partitions, r.Messages, r.Bytes)
				}
			})
		},
	}
	describe := &cobra.Command{
		Use:   "describe NAME",
		Short: "Show a topic's configuration and partitions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer l.Close()
			t, err := l.Topic(args[0])
			if err != nil {
				return usageError{err}
			}
			type part struct {
				Partition int    `json:"partition"`
				Start     uint64 `json:"start"`
				End       uint64 `json:"end"`
				Bytes     int64  `json:"bytes"`
			}
			out := struct {
				Name        string        `json:"name"`
				Retention   time.Duration `json:"retention_ns"`
				RetentionB  int64         `json:"retention_bytes"`
				Compact     bool          `json:"compact"`
				DedupWindow time.Duration `json:"dedup_window_ns"`
				Partitions  []part        `json:"partitions"`
			}{t.Name, t.Config.RetentionAge, t.Config.RetentionBytes, t.Config.Compact, t.Config.DedupWindow, nil}
			for i, p := range t.Partitions {
				out.Partitions = append(out.Partitions, part{i, p.Start, p.End, p.Bytes})
			}
			return g.print(cmd.OutOrStdout(), out, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "topic\t%s\nretention\t%v\nretention bytes\t%d\ncompact\t%v\ndedup window\t%v\n\n", out.Name, out.Retention, out.RetentionB, out.Compact, out.DedupWindow)
				fmt.Fprintln(w, "PARTITION\tSTART\tEND\tBYTES")
				for _, p := range out.Partitions {
					fmt.Fprintf(w, "%d\t%d\t%d\t%d\n", p.Partition, p.Start, p.End, p.Bytes)
				}
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a topic and its consumer offsets",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := g.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer l.Close()
			if err := l.DeleteTopic(cmd.Context(), args[0]); err != nil {
				return usageError{err}
			}
			return g.print(cmd.OutOrStdout(), topicResult{Topic: args[0], Deleted: true}, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "deleted topic %s\n", args[0])
			})
		},
	}
	cmd.AddCommand(create, list, describe, del)
	return cmd
}
