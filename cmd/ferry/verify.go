package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

func newVerifyCmd(g *globals) *cobra.Command {
	var runs int
	var keep bool
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Crash-and-check your disk: SIGKILL appending and consuming processes, then verify",
		Long: `verify runs, --runs times, a child process appending from 16 goroutines to a
log under --dir (default: a temporary directory; point it at the disk you
want to trust), kills it with SIGKILL after a random number of acknowledged
appends, reopens the log and checks that every acknowledged message is there,
once, at its offset, and that every key's messages are in order. Each run
then starts a consuming child (it writes one payment per order together with
its input offset, atomically) and kills it half-way too. At the end the
consumer finishes in process and every order must have exactly one payment.
It exits 1 if anything acknowledged was lost or any order was paid twice.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if runs < 1 || runs > 10000 {
				return usageError{fmt.Errorf("--runs %d: want 1 to 10000", runs)}
			}
			base := ""
			if cmd.Flags().Changed("dir") {
				base = g.dir
			}
			if base == "" {
				tmp, err := os.MkdirTemp("", "ferry-verify-")
				if err != nil {
					return err
				}
				base = tmp
			} else if err := os.MkdirAll(base, 0o755); err != nil {
				return usageError{err}
			}
			dir := filepath.Join(base, "log")
			if !keep {
				defer os.RemoveAll(dir)
			}
			out := cmd.OutOrStdout()
			acked := map[ferry.ID]ackedOrder{}
			lost, misplaced, disorder, torn := 0, 0, 0, int64(0)
			var logged int
			for r := 1; r <= runs; r++ {
				killAfter := 200 + rand.IntN(1800)
				n := 0
				if err := runChild(cmd.Context(), dir, "produce", func(f []string) bool {
					if f[0] == "ack" && len(f) == 5 {
						id, _ := ferry.ParseID(f[1])
						p, _ := strconv.Atoi(f[3])
						o, _ := strconv.ParseUint(f[4], 10, 64)
						acked[id] = ackedOrder{f[2], int32(p), o}
						n++
					}
					return n >= killAfter
				}, "--run", strconv.Itoa(r)); err != nil {
					return err
				}
				l, err := commitlog.Open(cmd.Context(), dir)
				if err != nil {
					return fmt.Errorf("run %d: reopen after SIGKILL: %w", r, err)
				}
				torn += l.Recovery().TornBytes
				msgs, err := readTopic(l, "orders")
				l.Close()
				if err != nil {
					return fmt.Errorf("run %d: read back: %w", r, err)
				}
				byID := map[ferry.ID]*ferry.Message{}
				for _, m := range msgs {
					byID[m.ID] = m
				}
				lost, misplaced = 0, 0
				for id, a := range acked {
					m := byID[id]
					switch {
					case m == nil:
						lost++
					case m.Partition != a.partition || m.Offset != a.offset || string(m.Payload) != a.payload:
						misplaced++
					}
				}
				disorder, _ = orderViolations(msgs)
				logged = len(msgs)
				paid, half := 0, rand.IntN(max(logged, 1))
				if err := runChild(cmd.Context(), dir, "pay", func(f []string) bool {
					if f[0] == "paid" {
						paid, _ = strconv.Atoi(f[1])
					}
					return paid >= half
				}); err != nil {
					return err
				}
				if !g.json {
					fmt.Fprintf(out, "run %d/%d: producer killed after %d acks, consumer after %d payments; %d acknowledged in all, %d in the log, %d lost\n", r, runs, n, paid, len(acked), logged, lost)
				}
			}
			twice, unpaid, err := finishPayments(cmd.Context(), dir)
			if err != nil {
				return err
			}
			verdict := "PASS"
			if lost+misplaced+disorder+twice+unpaid > 0 {
				verdict = "FAIL"
			}
			res := map[string]any{"runs": runs, "acknowledged": len(acked), "in_log": logged, "lost": lost, "misplaced": misplaced,
				"order_violations": disorder, "paid_twice": twice, "unpaid": unpaid, "torn_bytes_cut": torn, "verdict": verdict, "path": dir}
			if err := g.print(out, res, func(w *tabwriter.Writer) {
				for _, k := range []string{"runs", "acknowledged", "in_log", "lost", "misplaced", "order_violations", "paid_twice", "unpaid", "torn_bytes_cut", "verdict"} {
					fmt.Fprintf(w, "%s\t%v\n", k, res[k])
				}
			}); err != nil {
				return err
			}
			if verdict != "PASS" {
				return fmt.Errorf("a guarantee did not hold on %s", dir)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&runs, "runs", 10, "how many times to kill and check")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the log afterwards")
	return cmd
}

// finishPayments runs the payment processor to the end in process and
// counts orders paid twice or not at all.
func finishPayments(ctx context.Context, dir string) (twice, unpaid int, err error) {
	l, err := commitlog.Open(ctx, dir)
	if err != nil {
		return 0, 0, err
	}
	defer l.Close()
	if _, err := payOrders(ctx, l, nil); err != nil {
		return 0, 0, err
	}
	orders, err := readTopic(l, "orders")
	if err != nil {
		return 0, 0, err
	}
	payments, err := readTopic(l, "payments")
	if err != nil {
		return 0, 0, err
	}
	twice, unpaid = countPayments(orders, payments)
	return twice, unpaid, nil
}
