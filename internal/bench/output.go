package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable prints the report as an aligned table.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "ferry bench (%s, %s, %d CPUs, %s%s)\n\n", r.Started.Format(time.RFC3339), r.OS, r.CPUs, r.Go, map[bool]string{true: ", --quick"}[r.Quick])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tsystem\tfsync ack\tconc\tmessages\tmsg/s\tMB/s\tp50 ms\tp99 ms\tp99.9 ms\tratio\t")
	num := func(v float64, format string) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf(format, v)
	}
	for _, x := range r.Results {
		conc := "-"
		if x.Concurrency > 0 {
			conc = fmt.Sprint(x.Concurrency)
		}
		fsync := x.FsyncAck
		if fsync == "" {
			fsync = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", x.Scenario, x.System, fsync, conc, x.Messages, num(x.MsgsPerSec, "%.0f"), num(x.MBPerSec, "%.1f"),
			num(x.P50Ms, "%.3f"), num(x.P99Ms, "%.3f"), num(x.P999Ms, "%.3f"), num(x.Ratio, "%.2f"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	for _, x := range r.Results {
		if x.Note != "" {
			fmt.Fprintf(w, "%s / %s: %s\n", x.Scenario, x.System, x.Note)
		}
	}
	fmt.Fprintln(w, "\nfsync ack: yes = acknowledged only after an fsync; no = acknowledged from the page cache or memory; - = not an acknowledgement")
	if len(r.Unavailable) > 0 {
		fmt.Fprintln(w, "\nnot measured (peer unavailable):")
		for _, u := range r.Unavailable {
			fmt.Fprintf(w, "  %s / %s: %s\n", u.Scenario, u.System, u.Reason)
		}
	}
	return nil
}

// WriteJSON writes the report as one JSON document.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteSVG plots the latency scenario's distribution: the share of
// messages (y) handled within a latency (x, log scale).
func (r *Report) WriteSVG(w io.Writer) error {
	const width, height, left, bottom, top, right = 720.0, 420.0, 70.0, 50.0, 30.0, 20.0
	lat := r.Latency
	if len(lat) == 0 {
		return fmt.Errorf("bench: no latency samples to plot")
	}
	lo := math.Log10(max(float64(lat[0])/1e6, 0.001))
	hi := math.Log10(max(float64(lat[len(lat)-1])/1e6, 0.002))
	if hi-lo < 0.5 {
		hi = lo + 0.5
	}
	x := func(ms float64) float64 {
		return left + (math.Log10(max(ms, 0.001))-lo)/(hi-lo)*(width-left-right)
	}
	y := func(q float64) float64 { return height - bottom - q*(height-bottom-top) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="18">publish-to-handler latency, %d messages (cumulative share)</text>`+"\n", left, len(lat))
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, y(0), width-right, y(0))
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, y(0), left, y(1))
	for e := math.Ceil(lo); e <= hi; e++ {
		ms := math.Pow(10, e)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.1f" y="%.1f" text-anchor="middle">%g ms</text>`+"\n", x(ms), y(0), x(ms), y(1), x(ms), y(0)+18, ms)
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 1} {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(q)+4, q)
	}
	fmt.Fprintf(&b, `<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="`)
	step := max(len(lat)/1000, 1)
	for i := 0; i < len(lat); i += step {
		fmt.Fprintf(&b, "%.1f,%.1f ", x(float64(lat[i])/1e6), y(float64(i+1)/float64(len(lat))))
	}
	fmt.Fprintf(&b, "%.1f,%.1f\"/>\n</svg>\n", x(float64(lat[len(lat)-1])/1e6), y(1))
	_, err := io.WriteString(w, b.String())
	return err
}
