package main

import (
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Filters and states of dlq list, the fields of dlq show, and a group
// with no DLQ yet (exit 0, JSON []).
func TestDLQListFiltersShowFieldsAndNothingYet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	seedDLQ(t, dir, 2, 4)
	type row struct {
		ID    string `json:"id"`
		Key   string `json:"key"`
		State string `json:"state"`
	}
	list := func(args ...string) []row {
		t.Helper()
		var rows []row
		out := mustRun(t, dir, "", append([]string{"dlq", "list", "-g", "billing", "--json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("dlq list %v: %v\n%s", args, err, out)
		}
		return rows
	}
	if rows := list("--limit", "2"); len(rows) != 2 {
		t.Fatalf("--limit 2: %d rows", len(rows))
	}
	if rows := list("--class", "scheduled"); rows == nil || len(rows) != 0 {
		t.Fatalf("--class scheduled: %v (want [] : none were scheduled)", rows)
	}
	mustRun(t, dir, "", "dlq", "purge", "-g", "billing", "--key", "k0")
	mustRun(t, dir, "", "dlq", "redrive", "-g", "billing", "--key", "k1")
	for state, want := range map[string]string{"dead": "k2 k3", "requested": "k1", "purged": "k0", "redriven": ""} {
		var keys []string
		for _, r := range list("--state", state) {
			if r.State != state {
				t.Errorf("--state %s listed a %s entry", state, r.State)
			}
			keys = append(keys, r.Key)
		}
		slices.Sort(keys) // entries are in dead-letter order, which concurrent lanes decide
		if strings.Join(keys, " ") != want {
			t.Errorf("--state %s: keys %v, want %q", state, keys, want)
		}
	}

	id := list("--key", "k2")[0].ID
	var shown map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, dir, "", "dlq", "show", "-g", "billing", id, "--json")), &shown); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"topic", "partition", "offset", "handler", "first_failure", "last_failure"} {
		if _, ok := shown[f]; !ok {
			t.Errorf("dlq show --json lacks %q: %v", f, shown)
		}
	}
	if shown["handler"] != "billing" {
		t.Errorf("handler %v, want the group's name when the consumer names none", shown["handler"])
	}
	if _, err := time.Parse(time.RFC3339, shown["last_failure"].(string)); err != nil {
		t.Errorf("last_failure %v: not RFC 3339", shown["last_failure"])
	}
	if out, code := ferryRun(t, dir, "", "dlq", "show", "-g", "billing", id, "--class", "permanent"); code != exitBadInput {
		t.Errorf("dlq show with a list filter: exit %d\n%s", code, out)
	}

	// A group nothing was dead-lettered for.
	if out := mustRun(t, dir, "", "dlq", "list", "-g", "nobody", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("dlq list of a group with no DLQ, --json: %q, want []", out)
	}
	if out := mustRun(t, dir, "", "dlq", "list", "-g", "nobody"); !strings.Contains(out, "no dead letters yet") {
		t.Errorf("dlq list of a group with no DLQ: %q", out)
	}
	if out := mustRun(t, dir, "", "dlq", "redrive", "-g", "nobody", "--json"); !strings.Contains(out, `"entries": 0`) {
		t.Errorf("dlq redrive of a group with no DLQ: %q", out)
	}
	if out, code := ferryRun(t, dir, "", "dlq", "show", "-g", "nobody", id); code != exitBadInput || !strings.Contains(out, "no dead letters yet") {
		t.Errorf("dlq show in a group with no DLQ: exit %d %q", code, out)
	}
	for _, bad := range [][]string{{"--state", "gone"}, {"--limit", "-1"}, {"--class", "weird"}} {
		if out, code := ferryRun(t, dir, "", append([]string{"dlq", "list", "-g", "billing"}, bad...)...); code != exitBadInput {
			t.Errorf("dlq list %v: exit %d\n%s", bad, code, out)
		}
	}
	if out, code := ferryRun(t, dir, "", "topics", "create", "zero", "--partitions", "0"); code != exitBadInput || !strings.Contains(out, "want 1 to 4096") {
		t.Errorf("topics create --partitions 0: exit %d %q", code, out)
	}
}

// groups reset --json says what it moved.
func TestGroupsResetJSON(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	mustRun(t, dir, "", "topics", "create", "orders")
	mustRun(t, dir, "", "produce", "orders", "a", "b")
	mustRun(t, dir, "", "consume", "orders", "-g", "billing", "-n", "2")
	var rows []struct {
		Group     string `json:"group"`
		Topic     string `json:"topic"`
		Partition int32  `json:"partition"`
		Offset    uint64 `json:"offset"`
	}
	out := mustRun(t, dir, "", "groups", "reset", "billing", "--topic", "orders", "--to", "earliest", "--json")
	if err := json.Unmarshal([]byte(out), &rows); err != nil || len(rows) != 1 || rows[0].Group != "billing" || rows[0].Offset != 0 {
		t.Fatalf("groups reset --json: %v %+v\n%s", err, rows, out)
	}
}
