package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildBench builds the command into t's directory.
func buildBench(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ferry-bench")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// ferry-bench --quick completes and its output is well formed: every
// scenario and system present, counts and rates positive, percentiles
// ordered, and an SVG plot. No timing is asserted.
func TestBenchQuickIsWellFormed(t *testing.T) {
	dir := t.TempDir()
	plot := filepath.Join(dir, "latency.svg")
	cmd := exec.Command(buildBench(t), "--quick", "--json", "--dir", dir, "--plot", plot)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ferry-bench --quick: %v\n%s", err, out)
	}
	var report struct {
		CPUs    int `json:"cpus"`
		Results []struct {
			Scenario   string  `json:"scenario"`
			System     string  `json:"system"`
			Messages   int     `json:"messages"`
			MsgsPerSec float64 `json:"msgs_per_sec"`
			MBPerSec   float64 `json:"mb_per_sec"`
			P50        float64 `json:"p50_ms"`
			P99        float64 `json:"p99_ms"`
			P999       float64 `json:"p999_ms"`
			FsyncAck   string  `json:"fsync_before_ack"`
		} `json:"results"`
		Unavailable []struct {
			Scenario string `json:"scenario"`
			System   string `json:"system"`
			Reason   string `json:"reason"`
		} `json:"unavailable"`
	}
	if err := json.Unmarshal(out, &report); err != nil {
		t.Fatalf("--json output is not JSON: %v\n%s", err, out)
	}
	systems := map[string]int{}
	for _, r := range report.Results {
		systems[r.Scenario]++
		if r.Messages <= 0 || (r.MsgsPerSec <= 0 && r.MBPerSec <= 0) {
			t.Errorf("%s / %s: %d messages, %v msg/s, %v MB/s", r.Scenario, r.System, r.Messages, r.MsgsPerSec, r.MBPerSec)
		}
		if r.FsyncAck != "" && r.FsyncAck != "yes" && r.FsyncAck != "no" {
			t.Errorf("%s / %s: fsync_before_ack %q", r.Scenario, r.System, r.FsyncAck)
		}
		if r.P50 > r.P99 || r.P99 > r.P999 {
			t.Errorf("%s / %s: percentiles out of order: %v %v %v", r.Scenario, r.System, r.P50, r.P99, r.P999)
		}
	}
	// The peers that run as services (or a binary) may be missing on a
	// machine: each is measured or listed as unavailable with a reason,
	// never both and never neither.
	skipped := map[string]bool{}
	for _, u := range report.Unavailable {
		if u.Reason == "" || u.System == "" {
			t.Errorf("unavailable peer without a system or reason: %+v", u)
		}
		skipped[u.Scenario] = true
		t.Logf("peer unavailable on this machine: %s / %s: %s", u.Scenario, u.System, u.Reason)
	}
	want := map[string]int{"publish": 11, "publish-pipelined": 3, "append-vs-disk": 2, "consume": 2, "latency": 3, "latency-ack": 2, "router": 2,
		"serve-produce": 3, "serve-latency": 3, "serve-backlog": 1, "serve-consume": 1}
	peers := 0
	for _, p := range []string{"redis", "rabbitmq", "rabbitmq-stream"} {
		if !skipped[p] {
			peers++
		}
	}
	if peers > 0 || !skipped["river"] {
		// ferry's reference, then one line per peer (River's throughput
		// lines are its own; it has a latency line like the others).
		want["peer-publish"], want["peer-consume"], want["peer-latency"] = 1+peers, 1+peers, 1+peers
	}
	if !skipped["river"] {
		want["river-insert"], want["river-work"], want["river-retry"] = 4, 2, 2
		want["peer-latency"]++
	}
	for scenario, n := range want {
		if systems[scenario] != n {
			t.Errorf("scenario %s: %d lines, want %d", scenario, systems[scenario], n)
		}
	}
	for scenario := range systems {
		if _, ok := want[scenario]; !ok {
			t.Errorf("scenario %s: %d lines, want none", scenario, systems[scenario])
		}
	}
	svg, err := os.ReadFile(plot)
	if err != nil || !strings.HasPrefix(string(svg), "<svg") || !strings.Contains(string(svg), "<polyline") || !strings.HasSuffix(strings.TrimSpace(string(svg)), "</svg>") {
		t.Fatalf("plot: %v\n%.300s", err, svg)
	}
}
