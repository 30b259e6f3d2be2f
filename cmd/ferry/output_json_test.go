package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Errors say it once: one "ferry:", no package prefix or "message N"
// repeated, no trailing "invalid argument" after what was wrong, and the
// names in them (a DLQ topic, a topic name with ": " in it) intact.
func TestErrorsSayItOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "t")
	mustRun(t, dir, "", "topics", "create", "billing.dlq")
	mustRun(t, dir, "", "topics", "create", "c", "--compact")
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, make([]byte, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"produce", "t", "-p", "3", "x"}, `ferry: message 1 of the input: partition 3 of topic "t", which has partitions 0 to 0 (nothing was produced)`},
		{[]string{"produce", "t", "--whole", "-f", big}, `ferry: message 1 of the input: 2097152 bytes to "t" (key, payload and headers): the limit is 1048576 (nothing was produced)`},
		{[]string{"produce", "c", "x"}, `ferry: message 1 of the input: topic "c" is compacted, so every message needs a key (the latest message of each key is kept) (nothing was produced)`},
		{[]string{"produce", "nosuch", "x"}, `ferry: topic "nosuch": topic not found`},
		{[]string{"consume", "billing.dlq", "-p", "5"}, `ferry: partition 5 of billing.dlq: it has partitions 0 to 0`},
		{[]string{"topics", "create", "admin: x"}, `ferry: create topic: topic name "admin: x" has ':' at byte 5: allowed are ASCII letters, digits, '.', '_' and '-'`},
		{[]string{"topics", "create", "zamówienia"}, `has 'ó' at byte 3: allowed are ASCII letters`},
	}
	repeated := regexp.MustCompile(`message \d+[^:]*: message \d+|(ferry|commitlog|admin|dlq|embedded): (ferry|commitlog|admin|dlq|embedded): `)
	for _, c := range cases {
		out, code := ferryRun(t, dir, "", c.args...)
		out = strings.TrimSpace(out)
		if code == 0 || !strings.Contains(out, c.want) || strings.Count(out, "ferry:") != 1 || repeated.MatchString(out) ||
			strings.Contains(out, "invalid argument") {
			t.Errorf("ferry %q: exit %d\n got: %s\nwant: %s", c.args, code, out, c.want)
		}
	}
}

// --json works on every command, and its output is JSON that jq reads
// (an array for the lists, an empty one when there is nothing).
func TestEveryCommandsJSONReadsInJQ(t *testing.T) {
	jq, err := exec.LookPath("jq")
	if err != nil {
		msg := "jq is not installed (apt-get install -y jq): " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	dir := filepath.Join(t.TempDir(), "data")
	cases := []struct {
		args   []string
		filter string // a jq expression that must hold
	}{
		{[]string{"version"}, `.version != null`},
		{[]string{"topics", "create", "orders", "--partitions", "2"}, `.topic == "orders" and .partitions == 2 and .created`},
		{[]string{"topics", "alter", "orders", "--retention", "72h"}, `.retention == "72h0m0s"`},
		{[]string{"topics", "describe", "orders"}, `.bounds | length == 2`},
		{[]string{"topics", "list"}, `map(.name) == ["orders"]`},
		{[]string{"produce", "orders", "-k", "k", "a", "b"}, `.produced == 2`},
		{[]string{"consume", "orders"}, `.payload != null`},
		{[]string{"groups", "list"}, `type == "array" and length == 0`},
		{[]string{"groups", "reset", "billing", "--topic", "orders", "--to", "earliest"}, `type == "array" and length == 2`},
		{[]string{"groups", "list"}, `map(.group) == ["billing"]`},
		{[]string{"groups", "describe", "billing"}, `.partitions | length == 2`},
		{[]string{"dlq", "list", "-g", "billing"}, `type == "array" and length == 0`},
		{[]string{"replay", "orders", "--from", "earliest", "--to", "orders-copy"}, `.copied == 2`},
		{[]string{"audit"}, `type == "array"`},
		{[]string{"groups", "delete", "billing"}, `.deleted == true`},
		{[]string{"topics", "delete", "orders-copy"}, `.deleted == true`},
		{[]string{"demo"}, `length >= 10 and all(.held)`},
	}
	for _, c := range cases {
		// stdout alone, as a pipe into jq reads it (notes go to stderr).
		run := exec.Command(buildFerry(t), append([]string{"--dir", dir}, append(c.args, "--json")...)...)
		var stderr strings.Builder
		run.Stderr = &stderr
		raw, err := run.Output()
		if err != nil {
			t.Fatalf("ferry %q --json: %v\n%s", c.args, err, stderr.String())
		}
		out := string(raw)
		cmd := exec.Command(jq, "-e", "-s", "if length == 1 then .[0] else .[0] end | "+c.filter)
		cmd.Stdin = strings.NewReader(out)
		if res, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("ferry %q --json | jq -e '%s': %v %s\n%s", c.args, c.filter, err, res, out)
		}
	}
}

// What a user is told is what works: the way to grow a topic runs as
// given, an empty --from is refused (it would copy everything), and
// deleting a group says its DLQ topic is left.
func TestAdviceRunsAsGiven(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "a", "--partitions", "2")
	mustRun(t, dir, "", "produce", "a", "-k", "k1", "x", "y")
	out, code := ferryRun(t, dir, "", "topics", "alter", "a", "--partitions", "4")
	advice := "ferry topics create NEW --partitions 4 && ferry replay a --from earliest --to NEW"
	if code != exitBadInput || !strings.Contains(out, advice) {
		t.Fatalf("topics alter --partitions: exit %d\n%s", code, out)
	}
	// The advice, run (with NEW named), grows the topic.
	mustRun(t, dir, "", "topics", "create", "a4", "--partitions", "4")
	mustRun(t, dir, "", "replay", "a", "--from", "earliest", "--to", "a4")
	if n := strings.Count(mustRun(t, dir, "", "consume", "a4"), "\n"); n != 2 {
		t.Fatalf("the grown topic holds %d lines, want 2", n)
	}
	if out, code := ferryRun(t, dir, "", "replay", "a", "--from", "", "--to", "b"); code != exitBadInput || !strings.Contains(out, "--from is empty") {
		t.Fatalf("replay --from '': exit %d\n%s", code, out)
	}
	mustRun(t, dir, "", "topics", "create", "billing.dlq")
	mustRun(t, dir, "", "groups", "reset", "billing", "--topic", "a", "--to", "earliest")
	if out := mustRun(t, dir, "", "groups", "delete", "billing"); !strings.Contains(out, "its DLQ topic billing.dlq is left as it is") {
		t.Fatalf("groups delete says nothing of the DLQ:\n%s", out)
	}
}
