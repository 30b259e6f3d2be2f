package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
