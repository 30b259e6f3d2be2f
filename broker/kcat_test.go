package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testsvc"
)

// kcat runs kcat (librdkafka) with args against tb, stdin as given, and
// returns its output.
func kcat(t *testing.T, ctx context.Context, tb *testBroker, stdin string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		testsvc.Unavailable(t, "kcat", err, "apt-get install kcat")
	}
	cmd := exec.CommandContext(ctx, path, append([]string{"-b", tb.addr}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %v: %v\n%s", args, err, errOut.String())
	}
	return out.String()
}

// librdkafka, through kcat: metadata, produce from stdin with keys,
// consume, and consume in a group whose offsets the broker keeps.
func TestKcat(t *testing.T) {
	tb := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tb.createTopic(ctx, "events", 2)

	var md struct {
		Brokers []struct {
			ID   int    `json:"id"`
			Name string `json:"name"`
		} `json:"brokers"`
		Topics []struct {
			Topic      string `json:"topic"`
			Partitions []struct {
				Partition int `json:"partition"`
				Leader    int `json:"leader"`
			} `json:"partitions"`
		} `json:"topics"`
	}
	if err := json.Unmarshal([]byte(kcat(t, ctx, tb, "", "-L", "-J")), &md); err != nil {
		t.Fatal(err)
	}
	if len(md.Brokers) != 1 || md.Brokers[0].Name != tb.addr || len(md.Topics) != 1 || md.Topics[0].Topic != "events" || len(md.Topics[0].Partitions) != 2 {
		t.Fatalf("kcat -L: %+v", md)
	}

	kcat(t, ctx, tb, "a:1\nb:2\na:3\nc:4\n", "-P", "-t", "events", "-K", ":")
	out := kcat(t, ctx, tb, "", "-C", "-t", "events", "-o", "beginning", "-e", "-q", "-f", "%k=%s %h\n")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(lines)
	var plain []string
	for _, l := range lines {
		kv, hdrs, _ := strings.Cut(l, " ")
		if !strings.HasPrefix(hdrs, "ferry-id=") {
			t.Errorf("record %s: headers %q, want its ferry-id", kv, hdrs)
		}
		plain = append(plain, kv)
	}
	if want := []string{"a=1", "a=3", "b=2", "c=4"}; !slices.Equal(plain, want) {
		t.Fatalf("kcat -C read %q, want %q", plain, want)
	}
	// Keys keep their order: a=1 before a=3.
	if i, j := strings.Index(out, "a=1"), strings.Index(out, "a=3"); i < 0 || j < i {
		t.Fatalf("key a out of order:\n%s", out)
	}

	group := kcat(t, ctx, tb, "", "-G", "kg", "-o", "beginning", "-c", "4", "-q", "-f", "%s\n", "events")
	if got := strings.Fields(group); len(got) != 4 {
		t.Fatalf("kcat -G read %q, want 4 records", got)
	}
	// The group committed: the same group reads nothing more, and the
	// broker holds its offsets at the partitions' ends.
	waitFor(t, 30*time.Second, func() bool {
		total := uint64(0)
		for p := int32(0); p < 2; p++ {
			off, _ := tb.log.CommittedOffset("kg", "events", p)
			total += off
		}
		return total == 4
	})
}
