package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// buildFerry builds the command once per test run, as a user would get it.
func buildFerry(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ferry-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "ferry")
		if out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestDemoShowsEveryGuaranteeHeld(t *testing.T) {
	bin := buildFerry(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "demo", "--dir", dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ferry demo: %v\n%s", err, out)
	}
	text := string(out)
	for _, g := range []string{"acknowledged = durable", "per-key order", "producer deduplication", "effectively once", "corruption detected", "torn tail cut", "bad input refused", "nothing dropped", "order through DLQ and redrive", "breaker: outage is not a DLQ flood"} {
		line := ""
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, g) {
				line = l
			}
		}
		if line == "" {
			t.Fatalf("demo output lacks %q:\n%s", g, text)
		}
		if !strings.Contains(line, " yes ") {
			t.Errorf("guarantee not held: %s", line)
		}
	}
	if strings.Contains(text, " NO ") {
		t.Fatalf("demo reports a violation:\n%s", text)
	}
	if _, err := os.Stat(filepath.Join(dir, "log", "FERRY")); err != nil {
		t.Fatalf("demo did not use --dir: %v", err)
	}
}

func TestExitCodes(t *testing.T) {
	bin := buildFerry(t)
	for _, c := range []struct {
		args []string
		code int
		text string
	}{
		{[]string{"version"}, 0, "ferry dev"},
		{[]string{"demo", "--no-such-flag"}, 2, "unknown flag"},
		{[]string{"no-such-command"}, 2, "unknown command"},
		{[]string{"version", "extra"}, 2, "unknown command"},
	} {
		out, err := exec.Command(bin, c.args...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		if code != c.code || !strings.Contains(string(out), c.text) {
			t.Errorf("ferry %v: exit %d, output %q; want exit %d containing %q", c.args, code, out, c.code, c.text)
		}
	}
}
