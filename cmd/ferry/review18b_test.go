package main

// Review 18b: adversarial tests of consume/tail through --server. Each
// test states the guarantee it checks; a failure is a defect.

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/commitlog"
)

// remoteMatchesLocal runs each args locally (read-only beside ferry
// admin) and through --server, and reports any difference in output or
// exit code.
func remoteMatchesLocal(t *testing.T, dir, url string, argss ...[]string) {
	t.Helper()
	for _, args := range argss {
		local, lcode := ferryRun(t, dir, "", args...)
		remote, rcode := ferryExec(t, append([]string{"--server", url}, args...)...)
		if lcode != rcode || (lcode == 0 && remote != local) {
			t.Errorf("%v through --server: exit %d, %d line(s)\n%s\nwant, as on the directory: exit %d, %d line(s)\n%s",
				args, rcode, strings.Count(remote, "\n"), head(remote), lcode, strings.Count(local, "\n"), head(local))
		}
	}
}

// head returns the first lines of out, each cut at 80 bytes.
func head(out string) string {
	lines := strings.SplitAfter(out, "\n")
	var b strings.Builder
	for i, l := range lines {
		if i == 4 {
			b.WriteString("...\n")
			break
		}
		if len(l) > 80 {
			l = l[:80] + "...\n"
		}
		b.WriteString(l)
	}
	return b.String()
}

// A message delayed until later stops a reader of the log at it: ferry
// --dir consume prints what comes before it and nothing from it on. The
// same consume through --server must print the same lines; the admin
// API's browse (backend.Browser) reads past the delayed message, so the
// remote consume prints the delayed message and everything after it.
func TestReview18bRemoteConsumePrintsDelayedMessages(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "t", "--partitions", "1")
	mustRun(t, dir, "", "produce", "t", "-k", "k1", "a")
	mustRun(t, dir, "", "produce", "t", "-k", "k2", "--delay", "1h", "b")
	mustRun(t, dir, "", "produce", "t", "-k", "k3", "c")
	url := startAdmin(t, "--dir", dir)
	remoteMatchesLocal(t, dir, url,
		[]string{"consume", "t"},
		[]string{"consume", "t", "--from", "earliest"},
		[]string{"consume", "t", "--from", "1h"},
		[]string{"consume", "t", "--from", "1"},
		[]string{"consume", "t", "--partition", "0", "--json"},
	)
}

// A compacted topic with gaps, and a partition whose start retention
// moved: every --from form prints the same through --server as on the
// directory. Fails for every --from OFFSET below the partition's start:
// through --server consume prints from the first retained message (what
// the help promises), while ferry --dir D consume prints nothing and
// exits 0 (runConsume moves next[p] to the start but does not count it as
// progress, so the non-follow loop ends at once).
func TestReview18bRemoteConsumeCompactedAndTruncated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx := context.Background()
	l, err := commitlog.Open(ctx, dir, commitlog.WithSegmentBytes(64<<10), commitlog.WithMaxBatchBytes(16<<10), commitlog.WithMaxGroupBytes(16<<10), commitlog.WithMaxMessageBytes(8<<10))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTopic(ctx, "compacted", commitlog.TopicConfig{Partitions: 2, Compact: true, DedupWindow: -1}); err != nil {
		t.Fatal(err)
	}
	if err := l.CreateTopic(ctx, "trunc", commitlog.TopicConfig{Partitions: 2, RetentionBytes: 100 << 10, DedupWindow: -1}); err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour)
	for i := range 400 {
		for p, topic := range []string{"compacted", "trunc"} {
			_ = p
			m := &ferry.Message{ID: ferry.NewID(), Topic: topic, Key: []byte(fmt.Sprintf("k%d", i%7)),
				Payload: []byte(fmt.Sprintf("v%d %s", i, strings.Repeat("x", 1000))), Time: base.Add(time.Duration(i) * time.Second)}
			if err := l.Append(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := l.Clean(ctx); err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"compacted", "trunc"} {
		for p := range int32(2) {
			start, end, _ := l.Bounds(topic, p)
			t.Logf("%s/%d: %d to %d", topic, p, start, end)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	url := startAdmin(t, "--dir", dir)
	var cases [][]string
	for _, topic := range []string{"compacted", "trunc"} {
		for _, from := range []string{"earliest", "latest", "0", "5", "50", "150", "199", "-1", "-10", "-1000", "30m",
			base.Add(100 * time.Second).UTC().Format(time.RFC3339)} {
			for _, p := range []string{"0", "1"} {
				cases = append(cases, []string{"consume", topic, "--partition", p, "--from", from})
			}
		}
	}
	remoteMatchesLocal(t, dir, url, cases...)
}
