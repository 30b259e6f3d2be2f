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
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
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
	// cobra reports unknown commands, wrong arguments and missing required
	// flags as plain errors.
	unknown := strings.HasPrefix(err.Error(), "unknown command") || strings.Contains(err.Error(), "arg(s)") ||
		strings.HasPrefix(err.Error(), "required flag")
	badInput := errors.Is(err, ferry.ErrInvalidArgument) || errors.Is(err, ferry.ErrTopicNotFound) || errors.Is(err, ferry.ErrTopicExists) ||
		errors.Is(err, ferry.ErrOffsetOutOfRange) || errors.Is(err, admin.ErrNotFound) || errors.Is(err, admin.ErrProtected)
	if unknown || badInput || errors.As(err, &ue) {
		return exitBadInput
	}
	return exitFailure
}

// sayOnce renders err for a person: the packages' prefixes that wrapping
// repeats ("ferry: commitlog: ...: ferry: topic not found") are dropped
// where they start the message or one of its wrapped parts (never inside
// a name such as "billing.dlq: "), as "ferry:" is printed once before it;
// so is the "invalid argument" a message that says what was wrong ends in.
func sayOnce(err error) string {
	msg := err.Error()
	for {
		short := packagePrefix.ReplaceAllString(msg, "$1")
		if short == msg {
			break
		}
		msg = short
	}
	return sentinelTail.ReplaceAllString(msg, "$1$2")
}

// sentinelTail is an "invalid argument" beside what says what was wrong:
// at the end, before a parenthesis, or between two parts.
var sentinelTail = regexp.MustCompile(`(.): invalid argument($| \(|:)`)

// packagePrefix is a package's prefix at the start of a message or of a
// wrapped part of it.
var packagePrefix = regexp.MustCompile(`(^|: )(?:ferry|commitlog|embedded|dlq|admin): `)

// usageError marks errors in how the command was called.
type usageError struct{ error }

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "ferry",
		Short: "Durable messaging and correct processing, embedded in your process",
		Long: `ferry is a durable, partitioned log embedded in your process and a processing
runtime over it (consumer groups, ordered lanes, retries, dead letters,
exactly-once). These commands inspect and operate a data directory
(--dir), NATS JetStream (--nats) or Kafka (--kafka), or a running ferry
through its admin API (--server URL, or FERRY_SERVER; ferry admin --help).

Exit codes:
  0  success
  1  a guarantee was violated, or an operation failed (including: the data
     directory is in use by another process, named in the message)
  2  bad usage or bad input: unknown topic or command, malformed flag,
     offset or time, oversize message (nothing was changed)`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.Version = readBuildInfo().String()
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	g := addGlobals(root)
	root.AddCommand(newDemoCmd(g), newDemoChildCmd(), newVersionCmd(g), newTopicsCmd(g), newProduceCmd(g),
		newConsumeCmd(g, "consume", false, "earliest"), newConsumeCmd(g, "tail", true, "latest"), newGroupsCmd(g), newDLQCmd(g), newReplayCmd(g), newVerifyCmd(g), newServeCmd(g),
		newAdminCmd(g), newAuditCmd(g))
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := g.remote.check(cmd); err != nil {
			return err
		}
		top := cmd
		for top.HasParent() && top.Parent() != root {
			top = top.Parent()
		}
		switch top.Name() {
		case "topics", "groups", "dlq", "replay", "audit", "admin", "produce", "consume", "tail", "help", "version":
			return nil
		}
		return g.remote.refuseRemote(cmd)
	}
	return root
}

// buildInfo is what ferry version prints: the release version (set with
// -ldflags, else "dev") and what the Go toolchain recorded in the binary.
type buildInfo struct {
	Version       string `json:"version"`
	Module        string `json:"module,omitempty"`
	ModuleVersion string `json:"module_version,omitempty"` // "(devel)" for a build of a checkout without VCS stamping
	Revision      string `json:"revision,omitempty"`       // VCS revision (commit) the binary was built from
	RevisionTime  string `json:"revision_time,omitempty"`
	Modified      bool   `json:"modified,omitempty"` // built from a working tree with uncommitted changes
	Go            string `json:"go"`
}

// readBuildInfo fills buildInfo from runtime/debug.ReadBuildInfo.
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, Go: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	bi.Module, bi.ModuleVersion, bi.Go = info.Main.Path, info.Main.Version, info.GoVersion
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Revision = s.Value
		case "vcs.time":
			bi.RevisionTime = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

// String is the one line of ferry version and ferry --version:
// "ferry dev (github.com/ferrymq/ferry v0.0.0-..., revision 1a2b3c4d5e6f+modified, go1.26)".
func (bi buildInfo) String() string {
	var parts []string
	if bi.Module != "" {
		parts = append(parts, strings.TrimSpace(bi.Module+" "+bi.ModuleVersion))
	}
	if bi.Revision != "" {
		rev := bi.Revision[:min(12, len(bi.Revision))]
		if bi.Modified {
			rev += "+modified"
		}
		parts = append(parts, "revision "+rev)
	}
	parts = append(parts, bi.Go)
	return fmt.Sprintf("ferry %s (%s)", bi.Version, strings.Join(parts, ", "))
}

func newVersionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the ferry version (--json: also module version and VCS revision)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi := readBuildInfo()
			return g.print(cmd.OutOrStdout(), bi, func(w *tabwriter.Writer) { fmt.Fprintln(w, bi) })
		},
	}
}
