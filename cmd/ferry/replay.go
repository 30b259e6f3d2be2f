package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

func newGroupsResetCmd(g *globals) *cobra.Command {
	var topic, to string
	var partition int
	cmd := &cobra.Command{
		Use:   "reset GROUP",
		Short: "Move a group's committed offsets (earliest, latest, an offset or a time)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if topic == "" {
				return usageError{fmt.Errorf("name the topic to reset with --topic")}
			}
			l, err := g.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer l.Close()
			info, err := l.Topic(topic)
			if err != nil {
				return usageError{err}
			}
			var offs []commitlog.Offset
			for p := range info.Partitions {
				if partition >= 0 && p != partition {
					continue
				}
				off, err := parseStart(l, topic, int32(p), to)
				if err != nil {
					return err
				}
				offs = append(offs, commitlog.Offset{Topic: topic, Partition: int32(p), Offset: off})
			}
			if len(offs) == 0 {
				return usageError{fmt.Errorf("partition %d of %s: it has partitions 0 to %d", partition, topic, len(info.Partitions)-1)}
			}
			if err := l.CommitOffsets(cmd.Context(), args[0], offs...); err != nil {
				return err
			}
			for _, o := range offs {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s/%d -> %d\n", args[0], o.Topic, o.Partition, o.Offset)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&topic, "topic", "", "topic whose offsets to move")
	cmd.Flags().StringVar(&to, "to", "earliest", "earliest, latest, an offset, or an RFC 3339 time")
	cmd.Flags().IntVarP(&partition, "partition", "p", -1, "only this partition")
	return cmd
}

func newReplayCmd(g *globals) *cobra.Command {
	var from, until, to string
	cmd := &cobra.Command{
		Use:   "replay TOPIC --from TIME [--until TIME] --to TOPIC",
		Short: "Copy a time range of a topic into another topic",
		Long: `replay copies the messages of TOPIC whose time is in [--from, --until) into
--to, keeping key, payload and headers (plus ferry-replay-of naming the
original). Each copy's ID is derived from the original, so running the same
replay twice within the dedup window adds nothing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			start, err := time.Parse(time.RFC3339, from)
			if err != nil {
				return usageError{fmt.Errorf("--from %q: want an RFC 3339 time like 2026-11-23T10:00:00Z", from)}
			}
			end := time.Now().Add(time.Hour)
			if until != "" {
				if end, err = time.Parse(time.RFC3339, until); err != nil {
					return usageError{fmt.Errorf("--until %q: want an RFC 3339 time", until)}
				}
			}
			if to == "" || to == args[0] {
				return usageError{fmt.Errorf("--to must name another topic")}
			}
			l, err := g.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer l.Close()
			info, err := l.Topic(args[0])
			if err != nil {
				return usageError{err}
			}
			if _, err := l.Topic(to); err != nil {
				return usageError{err}
			}
			copied, dups := 0, 0
			for p := range info.Partitions {
				off, err := l.OffsetForTime(args[0], int32(p), start)
				if err != nil {
					return err
				}
				for off < info.Partitions[p].End {
					res, err := l.Read(args[0], int32(p), off, commitlog.ReadOpts{})
					if err != nil {
						return err
					}
					var batch []*ferry.Message
					for _, m := range res.Messages {
						if m.Time.Before(start) || !m.Time.Before(end) {
							continue
						}
						batch = append(batch, &ferry.Message{ID: ferry.DeriveID("replay", to, m.ID), Topic: to, Key: m.Key, Payload: m.Payload,
							Headers: append(append([]ferry.Header(nil), m.Headers...), ferry.Header{Key: "ferry-replay-of", Value: []byte(m.ID.String())})})
					}
					if len(batch) > 0 {
						b := &commitlog.Batch{Messages: batch}
						if err := l.Commit(cmd.Context(), b); err != nil {
							return err
						}
						copied += len(batch) - b.Duplicates
						dups += b.Duplicates
					}
					if len(res.Messages) == 0 {
						break
					}
					off = res.Next
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "replayed %d messages from %s into %s (%d already there)\n", copied, args[0], to, dups)
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "start of the time range (RFC 3339)")
	cmd.Flags().StringVar(&until, "until", "", "end of the time range, exclusive (RFC 3339; default: now)")
	cmd.Flags().StringVar(&to, "to", "", "topic to copy into")
	return cmd
}
