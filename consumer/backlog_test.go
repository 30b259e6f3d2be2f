package consumer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
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
	be.EnsureTopic(ctx, "in", 8)
	payload := make([]byte, 256)
	batch := make([]*ferry.Message, 0, 1000)
	for i := 0; i < n; i++ {
		batch = append(batch, &ferry.Message{Topic: "in", Key: []byte(strconv.Itoa(i % 10_000)), Payload: payload})
		if len(batch) == cap(batch) || i == n-1 {
			if err := l.Append(ctx, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	l.Sync(ctx)
	// Reset the peak so it measures consuming only.
	os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	var handled atomic.Int64
	all := make(chan struct{})
	c, err := New(be, "backlog", []string{"in"}, func(ctx context.Context, m *ferry.Message) error {
		if handled.Add(1) == int64(n) {
			close(all)
		}
		return nil
	}, WithConcurrency(64), WithCommitInterval(time.Second))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	<-all
	b.StopTimer()
	cancel()
	<-done
	rss, err := peakRSS()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n), "messages")
	b.ReportMetric(float64(rss)/(1<<20), "peak-RSS-MiB")
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msgs/s")
}
