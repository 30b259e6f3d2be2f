package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// The demo runs an order pipeline (orders -> payments) on the embedded log,
// injects faults — a producer and a consumer killed with SIGKILL, retried
// publishes, a flipped bit, a torn tail, bad input — and prints each
// guarantee with the evidence that it held.

const (
	demoProducers  = 16
	demoKillAfter  = 2000 // acknowledged orders before the producer is killed
	demoPartitions = 4
	demoGroup      = "payments"
)

type demoCheck struct {
	guarantee string
	evidence  string
	held      bool
}

func newDemoCmd(g *globals) *cobra.Command {
	var dir, metricsAddr string
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run an order pipeline with injected faults and show which guarantees held",
		Long: `demo runs an order pipeline (orders -> payments) on the embedded log in a
temporary directory (or --dir), injects faults and prints each guarantee with
the evidence that it held:

  - a producer process appending from 16 goroutines is killed with SIGKILL;
    every acknowledged order must be in the log afterwards;
  - every customer's orders must be in order;
  - retried publishes of the same message IDs must be suppressed;
  - a payment processor writing payments and its input offsets in one
    atomic batch is killed with SIGKILL mid-way and restarted: every order
    must be paid exactly once;
  - a flipped bit in the middle of the log must stop recovery with the file
    and offset, and a torn final write must be cut off;
  - an oversize message and a bad topic name must be refused without
    changing anything.

It exits 1 if any guarantee was violated. With --json the progress goes to
stderr and stdout is the table as [{"guarantee","held","evidence"}].`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				tmp, err := os.MkdirTemp("", "ferry-demo-")
				if err != nil {
					return err
				}
				if !keep {
					defer os.RemoveAll(tmp)
				}
				dir = tmp
			}
			progress := cmd.OutOrStdout()
			if g.json {
				progress = cmd.ErrOrStderr()
			}
			tel, err := startTelemetry(metricsAddr, progress)
			if err != nil {
				return err
			}
			defer tel.close()
			checks, err := runDemo(cmd.Context(), progress, dir, tel)
			if err != nil {
				return err
			}
			failed, err := printChecks(g, cmd.OutOrStdout(), checks)
			if err != nil {
				return err
			}
			if failed > 0 {
				return fmt.Errorf("%d guarantee(s) violated", failed)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the demo's data (default: a temporary directory, removed afterwards)")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary directory")
	cmd.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics and /healthz on this address (host:port) while the demo runs")
	return cmd
}

// demoResult is one row of the demo's table, as --json prints it.
type demoResult struct {
	Guarantee string `json:"guarantee"`
	Held      bool   `json:"held"`
	Evidence  string `json:"evidence"`
}

// printChecks prints the demo's table (or, with --json, its rows) and
// counts the guarantees violated.
func printChecks(g *globals, w io.Writer, checks []demoCheck) (failed int, err error) {
	rows := make([]demoResult, 0, len(checks))
	for _, c := range checks {
		if !c.held {
			failed++
		}
		rows = append(rows, demoResult{Guarantee: c.guarantee, Held: c.held, Evidence: c.evidence})
	}
	return failed, g.print(w, rows, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "\nGUARANTEE\tHELD\tEVIDENCE")
		for _, r := range rows {
			held := "yes"
			if !r.Held {
				held = "NO"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Guarantee, held, r.Evidence)
		}
	})
}

func runDemo(ctx context.Context, out io.Writer, dir string, tel *telemetry) ([]demoCheck, error) {
	logDir := filepath.Join(dir, "log")
	fmt.Fprintf(out, "ferry demo: data in %s\n", logDir)
	var checks []demoCheck

	// 1. Producer killed with SIGKILL under load.
	fmt.Fprintf(out, "1. producing orders from %d goroutines in a child process, SIGKILL after %d acks...\n", demoProducers, demoKillAfter)
	acked := map[ferry.ID]ackedOrder{}
	if err := runChild(ctx, logDir, "produce", func(f []string) bool {
		if f[0] == "ack" && len(f) == 5 {
			id, _ := ferry.ParseID(f[1])
			p, _ := strconv.Atoi(f[3])
			o, _ := strconv.ParseUint(f[4], 10, 64)
			acked[id] = ackedOrder{f[2], int32(p), o}
		}
		return len(acked) >= demoKillAfter
	}); err != nil {
		return nil, err
	}
	l, err := commitlog.Open(ctx, logDir, tel.logOpts()...)
	if err != nil {
		return append(checks, demoCheck{"acknowledged = durable", "reopen failed: " + err.Error(), false}), nil
	}
	orders, err := readTopic(l, "orders")
	if err != nil {
		l.Close()
		return nil, err
	}
	missing := 0
	byID := map[ferry.ID]*ferry.Message{}
	for _, m := range orders {
		byID[m.ID] = m
	}
	for id, a := range acked {
		if m := byID[id]; m == nil || m.Partition != a.partition || m.Offset != a.offset || string(m.Payload) != a.payload {
			missing++
		}
	}
	rec := l.Recovery()
	checks = append(checks, demoCheck{"acknowledged = durable",
		fmt.Sprintf("%d orders acknowledged before SIGKILL, %d missing after restart (log holds %d; torn tail cut: %d bytes, preallocated zeros past the last write dropped: %d bytes)", len(acked), missing, len(orders), rec.TornBytes, rec.ZeroTailBytes),
		missing == 0 && len(acked) > 0})

	// 2. Per-key order.
	fmt.Fprintln(out, "2. checking every customer's orders are in sequence...")
	violations, keys := orderViolations(orders)
	checks = append(checks, demoCheck{"per-key order", fmt.Sprintf("%d orders over %d customers, %d out of order", len(orders), keys, violations), violations == 0})

	// 3. Retried publishes are deduplicated.
	fmt.Fprintln(out, "3. re-publishing 500 acknowledged orders with their original IDs...")
	var retry []*ferry.Message
	for id, a := range acked {
		if len(retry) == 500 {
			break
		}
		retry = append(retry, &ferry.Message{ID: id, Topic: "orders", Key: []byte(customerOf(a.payload)), Payload: []byte(a.payload)})
	}
	before := totalEnd(l, "orders")
	b := &commitlog.Batch{Messages: retry}
	err = l.Commit(ctx, b)
	after := totalEnd(l, "orders")
	checks = append(checks, demoCheck{"producer deduplication", fmt.Sprintf("%d retried publishes, %d suppressed, log grew by %d", len(retry), b.Duplicates, after-before), err == nil && b.Duplicates == len(retry) && after == before})
	l.Close()

	// 4. Atomic consume-transform-produce across a SIGKILL.
	fmt.Fprintln(out, "4. paying orders in a child process (payments + offsets in one batch), SIGKILL half-way, then resuming...")
	paid := 0
	if err := runChild(ctx, logDir, "pay", func(f []string) bool {
		if f[0] == "paid" {
			paid, _ = strconv.Atoi(f[1])
		}
		return paid >= len(orders)/2
	}); err != nil {
		return nil, err
	}
	l, err = commitlog.Open(ctx, logDir, tel.logOpts()...)
	if err != nil {
		return append(checks, demoCheck{"effectively once", "reopen failed: " + err.Error(), false}), nil
	}
	if _, err := payOrders(ctx, l, nil); err != nil {
		l.Close()
		return nil, err
	}
	payments, err := readTopic(l, "payments")
	if err != nil {
		l.Close()
		return nil, err
	}
	twice, unpaid := countPayments(orders, payments)
	checks = append(checks, demoCheck{"effectively once", fmt.Sprintf("processor killed after %d payments and restarted: %d orders, %d payments, %d paid twice, %d unpaid", paid, len(orders), len(payments), twice, unpaid), twice == 0 && unpaid == 0 && len(payments) == len(orders)})

	// 5. Shipping through the runtime: retries, poison, outage, redrive.
	fmt.Fprintln(out, "5. shipping the payments: flaky carrier, a poison payment, a 300-call carrier outage behind a breaker, then a redrive...")
	shipChecks, err := shipStage(ctx, l, tel)
	if err != nil {
		l.Close()
		return nil, err
	}
	checks = append(checks, shipChecks...)

	// 6. Bad input changes nothing.
	fmt.Fprintln(out, "6. publishing an oversize message and one to a malformed topic name...")
	before = totalEnd(l, "orders")
	errBig := l.Append(ctx, &ferry.Message{Topic: "orders", Payload: make([]byte, 2<<20)})
	errName := l.Append(ctx, &ferry.Message{Topic: "orders/eu", Payload: []byte("x")})
	after = totalEnd(l, "orders")
	checks = append(checks, demoCheck{"bad input refused", fmt.Sprintf("2 MiB message: %q; bad topic: %q; log grew by %d", errText(errBig), errText(errName), after-before),
		errors.Is(errBig, ferry.ErrInvalidArgument) && errors.Is(errName, ferry.ErrInvalidArgument) && after == before})
	if err := l.Close(); err != nil {
		return nil, err
	}

	// 7. Corruption detected, torn tail cut (on copies of the log).
	fmt.Fprintln(out, "7. flipping a bit in the middle of a copy of the log, and tearing the tail of another...")
	checks = append(checks, corruptionChecks(ctx, dir, logDir)...)
	return checks, nil
}

type ackedOrder struct {
	payload   string
	partition int32
	offset    uint64
}

func errText(err error) string {
	if err == nil {
		return "accepted"
	}
	s := strings.TrimPrefix(err.Error(), "commitlog: ")
	s = strings.ReplaceAll(s, "ferry: invalid argument: ", "")
	return strings.TrimSuffix(s, ": ferry: invalid argument")
}

func customerOf(payload string) string {
	c, _, _ := strings.Cut(payload, "/")
	return c
}

// orderViolations checks that each customer's sequence numbers increase.
func orderViolations(msgs []*ferry.Message) (violations, keys int) {
	last := map[string]int{}
	for _, m := range msgs {
		c, seqText, _ := strings.Cut(string(m.Payload), "/")
		seq, _ := strconv.Atoi(seqText)
		if prev, ok := last[c]; ok && seq <= prev {
			violations++
		}
		last[c] = seq
	}
	return violations, len(last)
}

func totalEnd(l *commitlog.Log, topic string) uint64 {
	info, err := l.Topic(topic)
	if err != nil {
		return 0
	}
	var n uint64
	for _, p := range info.Partitions {
		n += p.End
	}
	return n
}

// readTopic reads every partition of a topic in order.
func readTopic(l *commitlog.Log, topic string) ([]*ferry.Message, error) {
	info, err := l.Topic(topic)
	if err != nil {
		return nil, err
	}
	var all []*ferry.Message
	for p, pi := range info.Partitions {
		for off := pi.Start; off < pi.End; {
			res, err := l.Read(topic, int32(p), off, commitlog.ReadOpts{})
			if err != nil {
				return nil, err
			}
			if len(res.Messages) == 0 {
				break
			}
			all = append(all, res.Messages...)
			off = res.Next
		}
	}
	return all, nil
}

// countPayments counts orders paid more than once and orders not paid.
func countPayments(orders, payments []*ferry.Message) (twice, unpaid int) {
	perOrder := map[string]int{}
	for _, p := range payments {
		perOrder[string(p.Payload)]++
	}
	for _, o := range orders {
		switch perOrder["paid "+o.ID.String()] {
		case 0:
			unpaid++
		case 1:
		default:
			twice++
		}
	}
	return twice, unpaid
}

// payOrders is the payment processor: for each partition of orders it
// reads from the group's committed offset and writes one payment per order
// together with the new offset, in one atomic batch. progress, if set, is
// told the running total.
func payOrders(ctx context.Context, l *commitlog.Log, progress func(int)) (int, error) {
	if err := l.CreateTopic(ctx, "payments", commitlog.TopicConfig{Partitions: demoPartitions}); err != nil && !errors.Is(err, ferry.ErrTopicExists) {
		return 0, err
	}
	paid := 0
	for p := int32(0); p < demoPartitions; p++ {
		start, end, err := l.Bounds("orders", p)
		if err != nil {
			return paid, err
		}
		off := start
		if c, ok := l.CommittedOffset(demoGroup, "orders", p); ok {
			off = c
		}
		for off < end {
			res, err := l.Read("orders", p, off, commitlog.ReadOpts{MaxMessages: 10})
			if err != nil {
				return paid, err
			}
			b := &commitlog.Batch{Group: demoGroup, Offsets: []commitlog.Offset{{Topic: "orders", Partition: p, Offset: res.Next}}}
			for _, o := range res.Messages {
				b.Messages = append(b.Messages, &ferry.Message{Topic: "payments", Key: o.Key, Payload: []byte("paid " + o.ID.String()),
					Headers: []ferry.Header{{Key: ferry.HeaderCausationID, Value: []byte(o.ID.String())}}})
			}
			if err := l.Commit(ctx, b); err != nil {
				return paid, err
			}
			paid += len(res.Messages)
			off = res.Next
			if progress != nil {
				progress(paid)
			}
		}
	}
	return paid, nil
}

// runChild runs "ferry demo-child" in mode and feeds each output line to
// onLine; when onLine returns true the child is killed with SIGKILL.
func runChild(ctx context.Context, logDir, mode string, onLine func([]string) bool, extra ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, exe, append([]string{"demo-child", "--dir", logDir, "--mode", mode}, extra...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "error" {
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("demo child (%s): %s", mode, sc.Text())
		}
		if !killed && onLine(f) {
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed && err != nil {
		return fmt.Errorf("demo child (%s): %v: %s", mode, err, stderr.String())
	}
	return nil
}

func newDemoChildCmd() *cobra.Command {
	var dir, mode string
	var run int
	cmd := &cobra.Command{
		Use:    "demo-child",
		Short:  "A process the demo kills (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			l, err := commitlog.Open(ctx, dir)
			if err != nil {
				fmt.Println("error", err)
				return err
			}
			defer l.Close()
			w := bufio.NewWriter(os.Stdout)
			var mu sync.Mutex
			emit := func(format string, args ...any) {
				mu.Lock()
				fmt.Fprintf(w, format, args...)
				w.Flush()
				mu.Unlock()
			}
			switch mode {
			case "produce":
				return produceOrders(ctx, l, emit, run)
			case "pay":
				_, err := payOrders(ctx, l, func(n int) { emit("paid %d\n", n) })
				return err
			}
			return usageError{fmt.Errorf("unknown mode %q", mode)}
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "log directory")
	cmd.Flags().StringVar(&mode, "mode", "", "produce or pay")
	cmd.Flags().IntVar(&run, "run", 0, "run number, to keep keys of successive runs apart")
	return cmd
}

// produceOrders appends orders from demoProducers goroutines until killed.
// Each customer (key) has its own producer, so its sequence numbers must
// appear in order.
func produceOrders(ctx context.Context, l *commitlog.Log, emit func(string, ...any), run int) error {
	if err := l.CreateTopic(ctx, "orders", commitlog.TopicConfig{Partitions: demoPartitions}); err != nil && !errors.Is(err, ferry.ErrTopicExists) {
		emit("error %v\n", err)
		return err
	}
	var wg sync.WaitGroup
	for p := 0; p < demoProducers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			customer := fmt.Sprintf("customer-%02d", p)
			if run > 0 {
				customer = fmt.Sprintf("run%d-customer-%02d", run, p)
			}
			for seq := 0; ctx.Err() == nil; seq++ {
				m := &ferry.Message{Topic: "orders", Key: []byte(customer), Payload: []byte(fmt.Sprintf("%s/%d", customer, seq)),
					Headers: []ferry.Header{{Key: ferry.HeaderType, Value: []byte("order.placed")}}}
				if err := l.Append(ctx, m); err != nil {
					emit("error %v\n", err)
					return
				}
				emit("ack %s %s %d %d\n", m.ID, m.Payload, m.Partition, m.Offset)
			}
		}(p)
	}
	wg.Wait()
	return nil
}

// corruptionChecks damages copies of the log: a bit flip in the middle
// must be refused with the file and offset; a torn final write must be cut.
func corruptionChecks(ctx context.Context, dir, logDir string) []demoCheck {
	var checks []demoCheck
	flipped := filepath.Join(dir, "flipped")
	seg, err := copyLogWithoutCheckpoints(logDir, flipped)
	if err == nil {
		var data []byte
		if data, err = os.ReadFile(seg); err == nil {
			at := int64(len(data) / 3)
			data[at] ^= 0x10
			err = os.WriteFile(seg, data, 0o644)
		}
	}
	if err != nil {
		return append(checks, demoCheck{"corruption detected", "could not prepare the copy: " + err.Error(), false})
	}
	l, err := commitlog.Open(ctx, flipped)
	var ce *commitlog.CorruptionError
	if errors.As(err, &ce) {
		checks = append(checks, demoCheck{"corruption detected", fmt.Sprintf("bit flip refused: %s at offset %d", filepath.Base(ce.File), ce.Offset), true})
	} else {
		if l != nil {
			l.Close()
		}
		checks = append(checks, demoCheck{"corruption detected", fmt.Sprintf("bit flip in the middle of the log not reported (err=%v)", err), false})
	}

	torn := filepath.Join(dir, "torn")
	seg, err = copyLogWithoutCheckpoints(logDir, torn)
	if err == nil {
		var f *os.File
		if f, err = os.OpenFile(seg, os.O_APPEND|os.O_WRONLY, 0); err == nil {
			_, err = f.Write([]byte{0x46, 0x52, 0x59, 0x31, 0x00, 0x10, 0, 0, 1, 2, 3})
			f.Close()
		}
	}
	if err != nil {
		return append(checks, demoCheck{"torn tail cut", "could not prepare the copy: " + err.Error(), false})
	}
	l, err = commitlog.Open(ctx, torn)
	if err != nil {
		return append(checks, demoCheck{"torn tail cut", "open failed: " + err.Error(), false})
	}
	n := l.Recovery().TornBytes
	l.Close()
	return append(checks, demoCheck{"torn tail cut", fmt.Sprintf("an 11-byte torn write at the end: %d bytes cut on recovery, nothing acknowledged lost", n), n == 11})
}

// copyLogWithoutCheckpoints copies a log directory (so recovery replays the
// whole log) and returns the path of its last segment.
func copyLogWithoutCheckpoints(from, to string) (lastSeg string, err error) {
	for _, sub := range []string{"", "wal", "checkpoints"} {
		if err := os.MkdirAll(filepath.Join(to, sub), 0o755); err != nil {
			return "", err
		}
	}
	for _, name := range []string{"FERRY"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o644); err != nil {
			return "", err
		}
	}
	segs, err := os.ReadDir(filepath.Join(from, "wal"))
	if err != nil {
		return "", err
	}
	for _, s := range segs {
		b, err := os.ReadFile(filepath.Join(from, "wal", s.Name()))
		if err != nil {
			return "", err
		}
		lastSeg = filepath.Join(to, "wal", s.Name())
		if err := os.WriteFile(lastSeg, b, 0o644); err != nil {
			return "", err
		}
	}
	return lastSeg, nil
}
