// Command ferry-bench measures ferry side by side with NATS JetStream and
// Watermill (and ferry serve, with Kafka clients, next to JetStream), in
// one process, on one disk, in one run, and with the durable peers that
// run as services: Redis Streams (a redis-server the bench starts),
// RabbitMQ quorum and stream queues, and River on PostgreSQL. It is a
// program of its own so that the ferry command does not link the peers
// it measures against: see BENCHMARKS.md.
//
// Exit codes: 0 success; 1 a scenario failed; 2 bad usage.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"

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
	var plot, dir, rabbitURL, postgresDSN, cpuProfile string
	var quick, asJSON bool
	var only []string
	cmd := &cobra.Command{
		Use:   "ferry-bench",
		Short: "Measure ferry side by side with JetStream, Watermill, Redis Streams, RabbitMQ and River",
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
  redis           Redis Streams: a redis-server the bench starts (it must be
                  on PATH) on a free loopback port, appendonly yes,
                  appendfsync always, data under --dir; 64 connections
                  pipelining 16 XADDs each, then XREADGROUP/XACK, next to
                  ferry's AppendAsync (64 × 16 in flight) and the runtime
  rabbitmq        a RabbitMQ quorum queue (--rabbitmq-url; default guest at
                  127.0.0.1:5672), fresh and uniquely named, deleted
                  afterwards: 64
                  publishers with confirms, 16 unconfirmed each, 256-byte
                  messages, then consumers with manual acks
  rabbitmq-stream the same with a stream queue (x-queue-type stream over
                  AMQP; no plugin needed)
  river           River on PostgreSQL (--postgres-dsn; default user postgres,
                  db test at 127.0.0.1:5432) in a fresh schema, dropped
                  afterwards: Insert from 64 goroutines and InsertMany of
                  1000, a no-op job's worker throughput, and 1% of jobs
                  failing twice before they succeed, each next to ferry
                  doing the same
  peers           (for --only) redis, rabbitmq, rabbitmq-stream and river

The "fsync ack" column says whether a line's system acknowledged each
message only after an fsync. A peer that cannot run here (its service
down, its binary missing) is listed under "not measured" with the reason,
and the other scenarios run.

A full run takes a few minutes; --quick is a smoke run of well under a
minute (its numbers are too small to quote). --plot writes the latency
distribution as SVG.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, name := range only {
				if name != "peers" && !slices.Contains(bench.Scenarios, name) {
					return usageError{fmt.Errorf("--only: unknown scenario %q (known: %s, peers)", name, strings.Join(bench.Scenarios, ", "))}
				}
			}
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return usageError{fmt.Errorf("--cpuprofile: %w", err)}
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			o := bench.Options{Dir: dir, Quick: quick, Only: only, RabbitMQURL: rabbitURL, PostgresDSN: postgresDSN, Progress: func(s string) { fmt.Fprintf(cmd.ErrOrStderr(), "running %s...\n", s) }}
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
	cmd.Flags().StringSliceVar(&only, "only", nil, "run only these scenarios ("+strings.Join(bench.Scenarios, ", ")+", or peers for the last four)")
	cmd.Flags().StringVar(&rabbitURL, "rabbitmq-url", bench.DefaultRabbitMQURL, "the RabbitMQ of the rabbitmq and rabbitmq-stream scenarios")
	cmd.Flags().StringVar(&postgresDSN, "postgres-dsn", bench.DefaultPostgresDSN, "the PostgreSQL of the river scenario (a schema is created and dropped in it)")
	cmd.Flags().StringVar(&plot, "plot", "", "write the latency distribution to this SVG file")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof reads it)")
	return cmd
}
