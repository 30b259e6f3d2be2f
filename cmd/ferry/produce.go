package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

func newProduceCmd(g *globals) *cobra.Command {
	var key, file, headersJSON string
	var headers []string
	var partition int
	cmd := &cobra.Command{
		Use:   "produce TOPIC [MESSAGE...]",
		Short: "Publish messages (from arguments, a file, or stdin lines)",
		Long: `produce publishes each MESSAGE argument, or each line of --file (or of
stdin when there are no arguments), durably, as one atomic batch. Nothing is
written if any message is invalid.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			hdrs, err := parseHeaders(headers, headersJSON)
			if err != nil {
				return usageError{err}
			}
			values := args[1:]
			if len(values) == 0 {
				in := cmd.InOrStdin()
				if file != "" && file != "-" {
					f, err := os.Open(file)
					if err != nil {
						return usageError{err}
					}
					defer f.Close()
					in = f
				}
				if values, err = readLines(in); err != nil {
					return err
				}
			}
			if len(values) == 0 {
				return usageError{fmt.Errorf("no messages to produce: give them as arguments, with --file, or on stdin")}
			}
			var msgs []*ferry.Message
			for _, v := range values {
				m := &ferry.Message{Topic: args[0], Payload: []byte(v), Headers: hdrs}
				if key != "" {
					m.Key = []byte(key)
				}
				if partition >= 0 {
					m.Partition, m.PinPartition = int32(partition), true
				}
				msgs = append(msgs, m)
			}
			l, err := g.open(cmd.Context(), true)
			if err != nil {
				return err
			}
			defer l.Close()
			b := &commitlog.Batch{Messages: msgs}
			if err := l.Commit(cmd.Context(), b); err != nil {
				return err
			}
			type row struct {
				ID        string `json:"id"`
				Partition int32  `json:"partition"`
				Offset    uint64 `json:"offset"`
			}
			var rows []row
			for _, m := range msgs {
				rows = append(rows, row{m.ID.String(), m.Partition, m.Offset})
			}
			return g.print(cmd.OutOrStdout(), rows, func(w *tabwriter.Writer) {
				fmt.Fprintf(w, "produced %d message(s) to %s", len(msgs), args[0])
				if b.Duplicates > 0 {
					fmt.Fprintf(w, " (%d duplicates suppressed)", b.Duplicates)
				}
				fmt.Fprintln(w)
			})
		},
	}
	cmd.Flags().StringVarP(&key, "key", "k", "", "message key (messages of one key stay in order)")
	cmd.Flags().StringArrayVarP(&headers, "header", "H", nil, "header NAME=VALUE (repeatable)")
	cmd.Flags().StringVar(&headersJSON, "headers-json", "", `headers as a JSON object, e.g. '{"ce-type":"order.placed"}'`)
	cmd.Flags().StringVarP(&file, "file", "f", "", "read messages from this file, one per line (- for stdin)")
	cmd.Flags().IntVarP(&partition, "partition", "p", -1, "write to this partition instead of choosing by key")
	return cmd
}

func parseHeaders(kv []string, js string) ([]ferry.Header, error) {
	var out []ferry.Header
	for _, h := range kv {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("header %q: want NAME=VALUE", h)
		}
		out = append(out, ferry.Header{Key: k, Value: []byte(v)})
	}
	if js != "" {
		var m map[string]string
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			return nil, fmt.Errorf("--headers-json: want a JSON object of strings, e.g. '{\"ce-type\":\"x\"}': %v", err)
		}
		for k, v := range m {
			out = append(out, ferry.Header{Key: k, Value: []byte(v)})
		}
	}
	return out, nil
}

func readLines(r io.Reader) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var out []string
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out, sc.Err()
}

// parseStart turns --from into a starting offset for a partition:
// earliest, latest, an offset, or an RFC 3339 time.
func parseStart(l *commitlog.Log, topic string, p int32, from string) (uint64, error) {
	start, end, err := l.Bounds(topic, p)
	if err != nil {
		return 0, err
	}
	switch from {
	case "earliest", "":
		return start, nil
	case "latest":
		return end, nil
	}
	if off, err := strconv.ParseUint(from, 10, 64); err == nil {
		return off, nil
	}
	if t, err := time.Parse(time.RFC3339, from); err == nil {
		return l.OffsetForTime(topic, p, t)
	}
	return 0, usageError{fmt.Errorf("--from %q: want earliest, latest, an offset, or an RFC 3339 time like 2026-11-23T10:00:00Z", from)}
}
