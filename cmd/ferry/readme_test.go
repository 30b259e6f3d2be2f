package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrymq/ferry/internal/testsvc"
)

// readmeBlock returns the first ```sh block after heading in README.md.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("README.md has no heading %q", heading)
	}
	s = s[i:]
	start := strings.Index(s, "```sh\n")
	if start < 0 {
		t.Fatalf("no ```sh block after %q", heading)
	}
	s = s[start+len("```sh\n"):]
	end := strings.Index(s, "```")
	if end < 0 {
		t.Fatalf("the ```sh block after %q does not end", heading)
	}
	return s[:end]
}

// The README's command-line walkthrough runs top to bottom exactly as
// written, from the repository's root, in bash with -e and pipefail: it
// installs the binary (GOBIN points into the test's directory), moves to
// a scratch directory and runs every command against a fresh data
// directory.
func TestREADMEWalkthroughRunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("installs the binary")
	}
	block := readmeBlock(t, "## The command line")
	bin := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "PATH="+bin+string(filepath.ListSeparator)+os.Getenv("PATH"), "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the README's walkthrough failed: %v\n--- script ---\n%s--- output ---\n%s", err, block, out)
	}
	for _, want := range []string{"produced 1000 message(s) to orders", "billing", "no dead letters yet", "orders-audit"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the walkthrough's output lacks %q:\n%s", want, out)
		}
	}
}

// The README's ferry serve section runs as written (on a free port instead
// of 9092, which another broker may hold): the server in the background,
// kcat producing, consuming and reading in a group, and SIGTERM.
func TestREADMEServeRunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("installs the binary")
	}
	if _, err := exec.LookPath("kcat"); err != nil {
		testsvc.Unavailable(t, "kcat", err, "apt-get install kcat")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	block := strings.ReplaceAll(readmeBlock(t, "## Sharing one log between services: `ferry serve`"), "127.0.0.1:9092", addr)
	bin, scratch := t.TempDir(), t.TempDir()
	block = strings.Replace(block, "go install ./cmd/ferry\n", "go install ./cmd/ferry\ncd "+scratch+"\n", 1)
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "PATH="+bin+string(filepath.ListSeparator)+os.Getenv("PATH"))
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the README's serve section did not finish:\n%s", out)
	}
	if err != nil {
		t.Fatalf("the README's serve section failed: %v\n--- script ---\n%s--- output ---\n%s", err, block, out)
	}
	for _, want := range []string{"k1 hello", "k2 world", "k1 again", "hello", "serving "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(string(out), "again") != 2 {
		t.Errorf("want 'again' from the plain and the group read:\n%s", out)
	}
}

// The README's admin section runs as written (on a free port instead of
// 8080): the example service in the background, the CLI listing and
// redriving its dead letters through --server while it runs.
func TestREADMEAdminRunsAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("installs the binaries")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	block := strings.ReplaceAll(readmeBlock(t, "## Operating a running service: the admin API"), "127.0.0.1:8080", addr)
	bin := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", block)
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOBIN="+bin, "PATH="+bin+string(filepath.ListSeparator)+os.Getenv("PATH"), "TMPDIR="+t.TempDir())
	done := make(chan struct{})
	var out []byte
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the README's admin section did not finish:\n%s", out)
	}
	if err != nil {
		t.Fatalf("the README's admin section failed: %v\n--- script ---\n%s--- output ---\n%s", err, block, out)
	}
	for _, want := range []string{"parked", "requested 2 entries", "k poison\nk k/1", "running here", "redriven 2 of 2"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
}
