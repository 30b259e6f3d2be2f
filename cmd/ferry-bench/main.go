// Command ferry-bench measures ferry side by side with NATS JetStream and
// Watermill (and ferry serve, with Kafka clients, next to JetStream), in one process, on one disk, in one run. It is a program of
// its own so that the ferry command does not link the peers it measures
// against (an in-process NATS server, Watermill): see BENCHMARKS.md.
//
// Exit codes: 0 success; 1 a scenario failed; 2 bad usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cmd := newBenchCmd()
	cmd.SetArgs(os.Args[1:])
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "ferry-bench:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks errors in how the command was called.
type usageError struct{ error }

func newBenchCmd() *cobra.Command {
	var plot, dir string
	var quick, asJSON bool
	var only []string
	cmd := &cobra.Command{
		Use:   "ferry-bench",
		Short: "Measure ferry side by side with NATS JetStream and Watermill",
		Long: `ferry-bench runs ferry and its peers in one process, on one disk, in one run, and
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
  serve           ferry serve (the broker, in this process, over a durable
                  log) with franz-go producers and a consumer vs JetStream
                  PublishAsync: produce throughput (8 producers, 8
                  partitions), ack latency at 5,000 msg/s, and the
                  process's RSS and heap growth under a 1M-record backlog

A full run takes a few minutes; --quick is a smoke run of well under a
minute (its numbers are too small to quote). --plot writes the latency
distribution as SVG.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			if asJSON {
				return r.WriteJSON(cmd.OutOrStdout())
			}
			return r.WriteTable(cmd.OutOrStdout())
		},
	}
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the disk scenarios (default: the system's temporary directory)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().BoolVar(&quick, "quick", false, "a smoke run of well under a minute")
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these scenarios (publish, publish-pipelined, append-vs-disk, consume, latency, router, serve)")
	cmd.Flags().StringVar(&plot, "plot", "", "write the latency distribution to this SVG file")
	return cmd
}
