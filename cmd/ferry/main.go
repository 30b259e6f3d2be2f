// Command ferry is the command line for ferry's embedded durable log.
//
// Exit codes: 0 success; 1 a guarantee was violated or an operation failed;
// 2 bad usage or bad input (nothing was changed).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const (
	exitOK       = 0
	exitFailure  = 1
	exitBadInput = 2
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:]))
}

func run(ctx context.Context, args []string) int {
	root := newRootCmd()
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintln(os.Stderr, "ferry:", sayOnce(err))
	var ue usageError
	// cobra reports unknown commands and wrong arguments as plain errors.
	unknown := strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "arg(s)")
	badInput := errors.Is(err, ferry.ErrInvalidArgument) || errors.Is(err, ferry.ErrTopicNotFound) || errors.Is(err, ferry.ErrTopicExists) || errors.Is(err, ferry.ErrOffsetOutOfRange)
	if unknown || badInput || errors.As(err, &ue) {
		return exitBadInput
	}
	return exitFailure
}

// sayOnce renders err for a person: the packages' prefixes that wrapping
// repeats ("ferry: commitlog: ...: ferry: topic not found") are dropped,
// as "ferry:" is printed once before the message.
func sayOnce(err error) string {
	msg := err.Error()
	for _, prefix := range []string{"ferry: ", "commitlog: ", "embedded: ", "dlq: "} {
		msg = strings.ReplaceAll(msg, prefix, "")
	}
	return msg
}

// usageError marks errors in how the command was called.
type usageError struct{ error }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Durable messaging and correct processing, embedded in your process",
		Long: `ferry is a durable, partitioned log embedded in your process and a processing
runtime over it (consumer groups, ordered lanes, retries, dead letters,
exactly-once). These commands inspect and operate a data directory.

Exit codes:
  0  success
  1  a guarantee was violated, or an operation failed (including: the data
     directory is in use by another process, named in the message)
  2  bad usage or bad input: unknown topic or command, malformed flag,
     offset or time, oversize message (nothing was changed)`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	g := addGlobals(root)
	root.AddCommand(newDemoCmd(), newDemoChildCmd(), newVersionCmd(), newTopicsCmd(g), newProduceCmd(g),
		newConsumeCmd(g, "consume", false, "earliest"), newConsumeCmd(g, "tail", true, "latest"), newGroupsCmd(g), newDLQCmd(g), newReplayCmd(g), newVerifyCmd(g))
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the ferry version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "ferry", version)
			return nil
		},
	}
}
