package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry/admin"
)

// writeAccess writes an access file with two tokens: an operator's (read,
// produce, redrive, purge on everything) and a viewer's (read only).
func writeAccess(t *testing.T, dir string) (file, opsToken, viewerToken string) {
	t.Helper()
	opsToken, viewerToken = "ops-token-0123456789abcdef", "viewer-token-0123456789abcdef"
	hash := func(tok string) string {
		h, err := admin.HashToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	cfg := admin.AuthConfig{
		Tokens: []admin.TokenConfig{{Name: "ops", Hash: hash(opsToken), Roles: []string{"operator"}}, {Name: "viewer", Hash: hash(viewerToken), Roles: []string{"viewer"}}},
		Roles: map[string][]admin.Rule{
			"operator": {{Verbs: []string{"read", "produce", "redrive", "purge"}, Topics: []string{"*"}, Groups: []string{"*"}}},
			"viewer":   {{Verbs: []string{"read"}, Topics: []string{"*"}, Groups: []string{"*"}}},
		},
	}
	file = filepath.Join(dir, "access.json")
	raw, _ := json.Marshal(cfg)
	if err := os.WriteFile(file, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return file, opsToken, viewerToken
}

// service is the billing service running in its own process.
type service struct {
	url            string // the admin API's base URL
	handled, fixed string // its --handled and --fixed files
	cmd            *exec.Cmd
	exited         chan error
}

// startService runs the service on a data directory under dir with the
// access file, and waits for it to serve.
func startService(t *testing.T, bin, dir, authFile string, args ...string) *service {
	t.Helper()
	s := &service{handled: filepath.Join(dir, "handled.txt"), fixed: filepath.Join(dir, "fixed"), exited: make(chan error, 1)}
	s.cmd = exec.Command(bin, append([]string{"--dir", filepath.Join(dir, "data"), "--admin", "127.0.0.1:0", "--auth", authFile,
		"--handled", s.handled, "--fixed", s.fixed}, args...)...)
	s.cmd.Stderr = os.Stderr
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	gone := make(chan struct{})
	go func() { s.exited <- s.cmd.Wait(); close(gone) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-gone
	})
	urlc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if u, ok := strings.CutPrefix(sc.Text(), "admin API on "); ok {
				urlc <- u
			}
		}
	}()
	select {
	case s.url = <-urlc:
	case err := <-s.exited:
		t.Fatalf("the service exited before serving: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("the service did not print its admin address")
	}
	return s
}

// lines returns what the service's handler has handled, in order.
func (s *service) lines() []string {
	b, _ := os.ReadFile(s.handled)
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// stop stops the service with SIGTERM and checks that it exits cleanly.
func (s *service) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.exited:
		if err != nil {
			t.Fatalf("the service on SIGTERM: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("the service did not stop on SIGTERM")
	}
}
