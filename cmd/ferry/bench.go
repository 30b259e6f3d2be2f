package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/internal/bench"
)

func newBenchCmd(g *globals) *cobra.Command {
	var plot string
	var quick bool
	var only []string
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure ferry side by side with NATS JetStream and Watermill",
		Long: `bench runs ferry and its peers in one process, on one disk, in one run, and
prints throughput and latency percentiles with ratios (--json: the report as
JSON). The disk scenarios run under --dir when it is given (the disk you
want measured), else in the system's temporary directory:

  publish         256-byte messages from 1, 16 and 64 synchronous publishers:
                  ferry (fsync before ack) vs an in-process NATS JetStream
                  file store, default mode and sync_always
  publish-pipelined
                  the same with 64 publishers keeping 16 publishes in
                  flight each (AppendAsync vs PublishAsync)
  append-vs-disk  batched durable appends vs the disk's own sequential
                  write+fsync bandwidth, measured here
  consume         the runtime with a no-op handler, and with a 1 ms handler
                  over 10k keys at concurrency 64 vs the Little's-law bound
  latency         publish ack and publish-to-handler latency at a fixed
                  offered rate
  router          the runtime vs Watermill's router with retry middleware,
                  each on its in-memory transport, no-op handler

A full run takes a few minutes; --quick is a smoke run of well under a
minute (its numbers are too small to quote). --plot writes the latency
distribution as SVG.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := "" // the global --dir, when given: the disk to measure
			if cmd.Flags().Changed("dir") {
				dir = g.dir
			}
			o := bench.Options{Dir: dir, Quick: quick, Only: only, Progress: func(s string) { fmt.Fprintf(cmd.ErrOrStderr(), "running %s...\n", s) }}
			r, err := bench.Run(cmd.Context(), o)
			if err != nil {
				return err
			}
			if plot != "" {
				f, err := os.Create(plot)
				if err != nil {
					return usageError{fmt.Errorf("--plot: %w", err)}
				}
				if err := r.WriteSVG(f); err != nil {
					f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
			}
			if g.json {
				return r.WriteJSON(cmd.OutOrStdout())
			}
			return r.WriteTable(cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&quick, "quick", false, "a smoke run of well under a minute")
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these scenarios (publish, publish-pipelined, append-vs-disk, consume, latency, router)")
	cmd.Flags().StringVar(&plot, "plot", "", "write the latency distribution to this SVG file")
	return cmd
}
