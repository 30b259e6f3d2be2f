package consumer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
)

// peakRSS returns the process's peak resident set (VmHWM) in bytes.
func peakRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmHWM in /proc/self/status")
}

// BenchmarkBacklogRSS writes a backlog of FERRY_BACKLOG messages (default
// 10M, 256-byte payloads) to the real disk, then consumes it through the
// runtime with a no-op handler and reports the peak RSS of the consuming
// phase (the peak is reset after the backlog is written). Run it with
// -benchtime 1x: it measures memory, b.N does not scale it.
func BenchmarkBacklogRSS(b *testing.B) {
	n := 10_000_000
	if s := os.Getenv("FERRY_BACKLOG"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	ctx := context.Background()
	dir := b.TempDir()
	if d := os.Getenv("FERRY_BENCH_DIR"); d != "" {
		dir, _ = os.MkdirTemp(d, "backlog-")
		defer os.RemoveAll(dir)
	}
	l, err := commitlog.Open(ctx, dir, commitlog.WithDurability(commitlog.DurabilityNone))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	be := embedded.New(l)
	defer be.Close()
	publishBacklog(b, l, be, n, 10_000)
	l.Sync(ctx)
	// Reset the peak so it measures consuming only.
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	timeConsume(b, be, n, func() {}, WithConcurrency(64), WithCommitInterval(time.Second))
	rss, err := peakRSS()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n), "messages")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
}
