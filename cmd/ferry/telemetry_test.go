package main

import (
	"bufio"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// ferry consume --metrics-addr serves /metrics (counting what it printed)
// and /healthz while it runs.
func TestConsumeServesMetrics(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders", "--partitions", "2")
	mustRun(t, dir, "", "produce", "orders", "-k", "c1", "a", "b", "c")
	cmd := exec.Command(buildFerry(t), "--dir", dir, "consume", "orders", "--group", "audit", "--follow", "--metrics-addr", "127.0.0.1:0")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	line, err := bufio.NewReader(stderr).ReadString('\n')
	if err != nil {
		t.Fatalf("no address announced: %v", err)
	}
	addr := regexp.MustCompile(`http://([^/]+)/metrics`).FindStringSubmatch(line)
	if addr == nil {
		t.Fatalf("announcement without an address: %q", line)
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + addr[1] + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var body string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, body = get("/metrics")
		if strings.Contains(body, "ferry_cli_messages_printed_total 3") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never counted the 3 printed messages:\n%s", body)
		}
	}
	// A scrape is no snapshot: the one that saw the count may have read
	// the log's health before the log was opened. One started after it
	// sees everything that happened before the messages were printed.
	_, body = get("/metrics")
	for _, want := range []string{"ferry_log_group_commits_total", "ferry_log_healthy 1", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code, b := get("/healthz"); code != http.StatusOK || !strings.Contains(b, `"ferry":"ok"`) {
		t.Fatalf("/healthz: %d %s", code, b)
	}
}
