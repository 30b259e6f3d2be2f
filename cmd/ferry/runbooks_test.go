package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/admin"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/internal/testsvc"
)

// The incidents of docs/runbooks.md, by their headings: alert rules link
// to their anchors, so a renamed heading fails here.
var runbookIncidents = []string{
	"A poison message",
	"A dependency outage: the breaker is open",
	"A consumer is stuck or lagging",
	"Disk full (ENOSPC)",
	"Corruption detected on open",
	"Restore from a copy of the data directory",
	"Rotating a leaked token",
}

// runbook is docs/runbooks.md split into its ```sh blocks: the setup block
// of "Before you start", and each incident's blocks in order.
type runbook struct {
	setup    string
	sections map[string][]string
	headings []string
}

func readRunbook(t *testing.T) runbook {
	t.Helper()
	raw, err := os.ReadFile("../../docs/runbooks.md")
	if err != nil {
		t.Fatal(err)
	}
	rb := runbook{sections: map[string][]string{}}
	heading, in := "", false
	var block strings.Builder
	for line := range strings.Lines(string(raw)) {
		switch {
		case in && strings.HasPrefix(line, "```"):
			rb.sections[heading] = append(rb.sections[heading], block.String())
			in = false
		case in:
			block.WriteString(line)
		case strings.HasPrefix(line, "```sh"):
			block.Reset()
			in = true
		case strings.HasPrefix(line, "## "):
			heading = strings.TrimSpace(strings.TrimPrefix(line, "## "))
			rb.headings = append(rb.headings, heading)
		}
	}
	if in {
		t.Fatalf("docs/runbooks.md: a ```sh block under %q does not end", heading)
	}
	setup := rb.sections["Before you start"]
	if len(setup) != 1 {
		t.Fatalf("docs/runbooks.md: want one ```sh block under \"Before you start\", found %d", len(setup))
	}
	rb.setup = setup[0]
	return rb
}

// Every incident has its section, under its exact heading, and no section
// goes untested.
func TestRunbooksHaveTheirHeadings(t *testing.T) {
	rb := readRunbook(t)
	want := append([]string{"Before you start"}, runbookIncidents...)
	if !slices.Equal(rb.headings, want) {
		t.Fatalf("docs/runbooks.md has the sections %q, want %q (alert rules link to these anchors; a new section needs its test)", rb.headings, want)
	}
	for _, h := range runbookIncidents {
		if len(rb.sections[h]) == 0 {
			t.Errorf("section %q has no ```sh block", h)
		}
	}
}

// Each incident of the runbooks happens for real, to examples/billing
// running as a service, and its section's commands run as written, in
// order, in bash with -e and pipefail, with the variables and the
// ferry_service command the runbooks' top asks for; then the outcome is
// checked.
func TestRunbooksRunAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs a service per incident")
	}
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			testsvc.Unavailable(t, tool, err, "apt-get install -y "+tool)
		}
	}
	rb := readRunbook(t)
	bin := runbookBin(t)
	incidents := map[string]func(*testing.T, *incident){
		"A poison message":                          poisonIncident,
		"A dependency outage: the breaker is open":  breakerIncident,
		"A consumer is stuck or lagging":            stuckIncident,
		"Disk full (ENOSPC)":                        diskFullIncident,
		"Corruption detected on open":               corruptionIncident,
		"Restore from a copy of the data directory": restoreIncident,
		"Rotating a leaked token":                   tokenIncident,
	}
	for _, h := range runbookIncidents {
		t.Run(strings.ReplaceAll(h, " ", "_"), func(t *testing.T) {
			t.Parallel()
			e := newIncident(t, bin, rb.setup, rb.sections[h])
			incidents[h](t, e)
			if e.ran != len(e.blocks) {
				t.Fatalf("the test ran %d of the section's %d blocks", e.ran, len(e.blocks))
			}
		})
	}
}

var (
	runbookBinOnce sync.Once
	runbookBinDir  string
	runbookBinErr  error
)

// runbookBin returns a directory with ferry, billing and ferry_service, to
// put first on PATH.
func runbookBin(t *testing.T) string {
	ferryBin := buildFerry(t)
	runbookBinOnce.Do(func() {
		dir := filepath.Dir(ferryBin)
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "billing"), "../../examples/billing").CombinedOutput(); err != nil {
			runbookBinErr = fmt.Errorf("go build examples/billing: %v\n%s", err, out)
			return
		}
		// The deployment's ferry_service of the runbooks: here it asks the
		// test, which runs the service as its child.
		script := "#!/bin/sh\n# ferry_service start|stop|logs for docs/runbooks.md: the test runs the service.\n" +
			"exec curl -sS --fail-with-body -X POST \"$FERRY_TEST_SERVICE/$1\"\n"
		runbookBinErr = os.WriteFile(filepath.Join(dir, "ferry_service"), []byte(script), 0o755)
		runbookBinDir = dir
	})
	if runbookBinErr != nil {
		t.Fatal(runbookBinErr)
	}
	return runbookBinDir
}

// incident is one section's run: a scratch directory, the service, and
// the section's blocks, run in order.
type incident struct {
	t                   *testing.T
	work, dir, url      string
	bin, setup          string
	blocks              []string
	ran                 int
	vars                map[string]string // the runbooks' variables
	svc                 *billingService
	client              *admin.Client
	handled, fixed      string
	down, hang, logFile string
}

func newIncident(t *testing.T, bin, setup string, blocks []string) *incident {
	work := t.TempDir()
	e := &incident{t: t, work: work, dir: filepath.Join(work, "data"), bin: bin, setup: setup, blocks: blocks,
		handled: filepath.Join(work, "handled.txt"), fixed: filepath.Join(work, "fixed"),
		down: filepath.Join(work, "down"), hang: filepath.Join(work, "hang"), logFile: filepath.Join(work, "billing.log")}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e.url = "http://" + addr
	e.vars = map[string]string{"FERRY_SERVER": e.url, "FERRY_TOKEN": "", "FERRY_GROUP": "billing", "FERRY_TOPIC": "orders",
		"FERRY_COPY": filepath.Join(work, "copy"), "FERRY_AUTH": filepath.Join(work, "access.json"), "FERRY_BALLAST": filepath.Join(work, "ballast")}
	e.svc = &billingService{t: t, bin: filepath.Join(bin, "billing"), addr: addr, authFile: e.vars["FERRY_AUTH"], e: e}
	e.setDir(e.dir)
	t.Cleanup(e.svc.kill)
	ctl := httptest.NewServer(http.HandlerFunc(e.svc.serveControl))
	t.Cleanup(ctl.Close)
	e.vars["FERRY_TEST_SERVICE"] = ctl.URL
	e.client, err = admin.NewClient(e.url, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// setDir moves the service's data directory (before it starts).
func (e *incident) setDir(dir string) {
	e.svc.mu.Lock() // the service reads e.dir when it starts
	defer e.svc.mu.Unlock()
	e.dir = dir
	e.vars["FERRY_DIR"] = dir
}

// setToken makes token the operator's (FERRY_TOKEN) and the test's.
func (e *incident) setToken(token string) {
	e.vars["FERRY_TOKEN"] = token
	c, err := admin.NewClient(e.url, token, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	e.client = c
}

// run runs the section's next n blocks in one bash session, after the
// runbooks' setup block, and returns what they printed.
func (e *incident) run(n int) string {
	t := e.t
	t.Helper()
	if e.ran+n > len(e.blocks) {
		t.Fatalf("the section has %d blocks; the test wants to run %d more after %d", len(e.blocks), n, e.ran)
	}
	// The trace (-x) goes to the output through a descriptor of its own, so
	// that a block's 2>&1 does not capture it.
	script := "exec 3>&2; BASH_XTRACEFD=3\n" + e.setup + strings.Join(e.blocks[e.ran:e.ran+n], "")
	first := e.ran + 1
	e.ran += n
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euxo", "pipefail", "-c", script)
	cmd.Dir = e.work
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	env := []string{"PATH=" + e.bin + string(filepath.ListSeparator) + os.Getenv("PATH")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FERRY_") && !strings.HasPrefix(kv, "PATH=") {
			env = append(env, kv)
		}
	}
	for k, v := range e.vars {
		env = append(env, k+"="+v)
	}
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("still running after 45 s: %w", err)
	}
	if err != nil {
		t.Fatalf("blocks %d-%d of the section failed: %v\n--- script ---\n%s\n--- output ---\n%s\n--- service log ---\n%s",
			first, e.ran, err, script, out, tail(e.logs(), 40))
	}
	t.Logf("blocks %d-%d ran:\n%s", first, e.ran, out)
	return string(out)
}

func tail(b []byte, lines int) string {
	ls := strings.Split(string(b), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

func (e *incident) logs() []byte {
	b, _ := os.ReadFile(e.logFile)
	return b
}

func (e *incident) touch(name string) {
	if err := os.WriteFile(name, nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

func (e *incident) remove(name string) {
	if err := os.Remove(name); err != nil {
		e.t.Fatal(err)
	}
}

func (e *incident) start() {
	e.t.Helper()
	if err := e.svc.start(); err != nil {
		e.t.Fatal(err)
	}
}

func (e *incident) produce(key string, payloads ...string) {
	e.t.Helper()
	msgs := make([]admin.Message, len(payloads))
	for i, p := range payloads {
		msgs[i] = admin.Message{Key: key, Payload: p}
	}
	if _, err := e.client.Produce(context.Background(), "orders", msgs); err != nil {
		e.t.Fatalf("produce %s %q: %v", key, payloads, err)
	}
}

// handledOf returns the payloads the service handled for key, in order
// (its handler writes a line "KEY PAYLOAD" for each).
func (e *incident) handledOf(key string) []string {
	b, _ := os.ReadFile(e.handled)
	var out []string
	for l := range strings.Lines(string(b)) {
		if k, p, _ := strings.Cut(strings.TrimSuffix(l, "\n"), " "); k == key {
			out = append(out, p)
		}
	}
	return out
}

func (e *incident) group() admin.Group {
	e.t.Helper()
	g, err := e.client.Group(context.Background(), "billing")
	if err != nil {
		e.t.Fatalf("group billing: %v", err)
	}
	return g
}

// warmUp has the consumer handle and commit a message in each partition
// of orders, so that the group's lag covers all of them.
func (e *incident) warmUp() {
	e.t.Helper()
	for _, k := range keysCovering(3) {
		e.produce(k, "warm")
	}
	waitUntil(e.t, "a commit in each partition", func() bool {
		g := e.group()
		return len(g.Partitions) == 3 && !slices.ContainsFunc(g.Partitions, func(p admin.GroupPartition) bool { return p.Lag > 0 })
	})
}

// keysCovering returns a key for each of n partitions.
func keysCovering(n int) []string {
	keys := make([]string, n)
	for i, found := 0, 0; found < n; i++ {
		k := "w" + strconv.Itoa(i)
		if p := ferry.PartitionForKey([]byte(k), n); keys[p] == "" {
			keys[p] = k
			found++
		}
	}
	return keys
}

// payloads returns the payloads of orders in the data directory, which
// no process may own.
func (e *incident) payloads() []string {
	e.t.Helper()
	l, err := commitlog.Open(context.Background(), e.dir, commitlog.WithReadOnly())
	if err != nil {
		e.t.Fatalf("open %s: %v", e.dir, err)
	}
	defer l.Close()
	msgs, err := readTopic(l, "orders")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, m := range msgs {
		out = append(out, string(m.Payload))
	}
	slices.Sort(out)
	return out
}

func (e *incident) healthy() {
	e.t.Helper()
	h, err := e.client.Health(context.Background())
	if err != nil || h.Status != "ok" || h.Consumers != 1 {
		e.t.Fatalf("health: %+v, %v", h, err)
	}
}

// waitUntil polls cond until it holds, failing after a bound far beyond
// what the step needs: it waits on progress, it does not time it.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 30 s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// billingService runs examples/billing as a child of the test, for the
// ferry_service command of the runbooks (start, stop, logs).
type billingService struct {
	t    *testing.T
	bin  string
	addr string
	e    *incident
	// authFile is the access file, given as --auth if auth.
	authFile string
	auth     bool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func (s *billingService) serveControl(w http.ResponseWriter, r *http.Request) {
	var err error
	switch r.URL.Path {
	case "/start":
		err = s.start()
	case "/stop":
		s.stop()
	case "/logs":
		w.Write(s.e.logs())
		return
	default:
		err = fmt.Errorf("ferry_service %s: want start, stop or logs", strings.TrimPrefix(r.URL.Path, "/"))
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

// start starts the service unless it runs, and returns once it serves,
// or with why it exited instead.
func (s *billingService) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running() {
		return nil
	}
	e := s.e
	args := []string{"--dir", e.dir, "--admin", s.addr, "--handled", e.handled, "--fixed", e.fixed, "--down", e.down, "--hang", e.hang}
	if s.auth {
		args = append(args, "--auth", s.authFile)
	}
	log, err := os.OpenFile(e.logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = e.work
	cmd.Stderr = log
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		log.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	ready, done := make(chan struct{}), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			if strings.HasPrefix(sc.Text(), "admin API on ") {
				close(ready)
			}
		}
		cmd.Wait()
		log.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	select {
	case <-ready:
		return nil
	case <-done:
		return fmt.Errorf("billing exited (%v) before serving:\n%s", cmd.ProcessState, tail(e.logs(), 5))
	case <-time.After(30 * time.Second):
		return errors.New("billing did not serve within 30 s")
	}
}

func (s *billingService) running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stop stops the service with SIGTERM (SIGKILL after 20 s) and returns
// once it exited.
func (s *billingService) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running() {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

func (s *billingService) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running() {
		s.cmd.Process.Kill()
		<-s.done
	}
}

// A poison message dead-letters and parks its key; the operator purges
// one key's (its parked message goes on) and, once the fix is deployed,
// redrives the other's: handled once each, in order.
func poisonIncident(t *testing.T, e *incident) {
	e.start()
	e.produce("k", "poison", "k/1")
	e.produce("q", "poison", "q/1")
	waitUntil(t, "two dead letters, each with a message parked behind it", func() bool {
		es, err := e.client.DeadLetters(context.Background(), "billing.dlq", admin.Filter{}, admin.Page{})
		return err == nil && len(es) == 4
	})
	out := e.run(2) // diagnose; purge k's poison message
	if !strings.Contains(out, "payload        poison") || !strings.Contains(out, "purged 1 entries") {
		t.Fatalf("the show and the purge:\n%s", out)
	}
	e.touch(e.fixed) // the fix is deployed
	e.run(1)         // redrive
	if got := e.handledOf("k"); !slices.Equal(got, []string{"k/1"}) {
		t.Errorf("key k handled %q, want only k/1: its poison message was purged", got)
	}
	if got := e.handledOf("q"); !slices.Equal(got, []string{"poison", "q/1"}) {
		t.Errorf("key q handled %q, want poison then q/1, once each", got)
	}
	recs, err := e.client.AuditLog(context.Background(), admin.AuditQuery{})
	if err != nil {
		t.Fatal(err)
	}
	var acts []string
	for _, r := range recs {
		if r.Data.Verb != "produce" {
			acts = append(acts, r.Data.Verb+" "+r.Data.Counts)
		}
	}
	if want := []string{"purge purged 1", "redrive redriven 2 of 2"}; !slices.Equal(acts, want) {
		t.Errorf("audit: %q, want %q", acts, want)
	}
}

// The payments dependency goes down: the breaker opens and nothing is
// dead-lettered; it comes back: the breaker closes, the backlog drains.
func breakerIncident(t *testing.T, e *incident) {
	e.start()
	e.warmUp()
	e.touch(e.down)
	for _, k := range keysCovering(3) {
		e.produce(k, "during-"+k)
	}
	waitUntil(t, "the breaker to open", func() bool {
		g := e.group()
		return len(g.Running) == 1 && g.Running[0].Stats.Breaker == "open"
	})
	out := e.run(1)
	if !strings.Contains(out, "circuit breaker of") || !strings.Contains(out, `"breaker":"open"`) {
		t.Fatalf("the diagnosis does not show the open breaker:\n%s", out)
	}
	e.remove(e.down) // the dependency is back
	out = e.run(1)
	if !strings.Contains(out, "\nclosed\n") {
		t.Fatalf("the breaker is not shown closed:\n%s", out)
	}
	for _, k := range keysCovering(3) {
		if got := e.handledOf(k); !slices.Equal(got, []string{"warm", "during-" + k}) {
			t.Errorf("key %s handled %q", k, got)
		}
	}
	if es, err := e.client.DeadLetters(context.Background(), "billing.dlq", admin.Filter{}, admin.Page{}); err != nil || len(es) != 0 {
		t.Errorf("the outage dead-lettered %v (%v)", es, err)
	}
}

// Calls to the dependency hang: the lag grows while the consumer is
// healthy; the stacks show where the calls wait, a restart ends them, and
// every message is handled once.
func stuckIncident(t *testing.T, e *incident) {
	e.start()
	e.warmUp()
	e.touch(e.hang)
	for _, k := range keysCovering(3) {
		e.produce(k, "stuck-"+k)
	}
	waitUntil(t, "a call in flight in each partition", func() bool {
		g := e.group()
		return len(g.Running) == 1 && g.Running[0].Stats.InFlight == 3
	})
	out := e.run(1)
	if !strings.Contains(out, `"in_flight":3`) || !strings.Contains(out, "lag 3, 5 s later 3") {
		t.Fatalf("the diagnosis does not show the calls in flight and the lag standing:\n%s", out)
	}
	e.remove(e.hang) // the dependency answers again; the calls made before still wait
	out = e.run(1)
	if !strings.Contains(out, "main.run.func") {
		t.Fatalf("the stacks do not show the handler:\n%s", out)
	}
	for _, k := range keysCovering(3) {
		if got := e.handledOf(k); !slices.Equal(got, []string{"warm", "stuck-" + k}) {
			t.Errorf("key %s handled %q, want warm and stuck-%s once each", k, got, k)
		}
	}
	e.healthy()
}

// The data filesystem fills (a small tmpfs): the log fails; the ballast
// is deleted, the restart reopens the log, and the consumer catches up.
func diskFullIncident(t *testing.T, e *incident) {
	if os.Geteuid() != 0 {
		t.Skip("a full disk is a small tmpfs, and mounting one needs root")
	}
	disk := filepath.Join(e.work, "disk")
	if err := os.Mkdir(disk, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", disk).CombinedOutput(); err != nil {
		msg := fmt.Sprintf("mount -t tmpfs -o size=64m (as root): %v %s", err, out)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + ": CI runs as root where mounting works")
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { // after the service stopped (cleanups run last first)
		if out, err := exec.Command("umount", disk).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", disk, err, out)
		}
	})
	t.Cleanup(e.svc.kill)
	e.setDir(filepath.Join(disk, "data"))
	e.vars["FERRY_BALLAST"] = filepath.Join(disk, "ballast")
	e.start()
	e.warmUp()
	e.run(2) // the ballast; the fsync probe
	if fi, err := os.Stat(e.vars["FERRY_BALLAST"]); err != nil || fi.Size() < 1<<20 {
		t.Fatalf("the ballast: %v, %v", fi, err)
	}
	// Something else fills the filesystem, then the log hits its end.
	filler, err := os.Create(filepath.Join(disk, "runaway.log"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := filler.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	filler.Close()
	big := make([]byte, 100<<10)
	rand.Read(big)
	payload := fmt.Sprintf("%x", big)
	var perr error
	var filled []string
	for i := 0; i < 100 && perr == nil; i++ {
		p := fmt.Sprintf("fill-%d-%s", i, payload[:200<<10])
		if _, perr = e.client.Produce(context.Background(), "orders", []admin.Message{{Key: "fill", Payload: p}}); perr == nil {
			filled = append(filled, p)
		}
	}
	if perr == nil || !strings.Contains(perr.Error(), "no space left on device") {
		t.Fatalf("producing to a full disk: %v", perr)
	}
	waitUntil(t, "the service to log the failure", func() bool { return bytes.Contains(e.logs(), []byte("no space left on device")) })
	out := e.run(2) // diagnose; fix
	if !strings.Contains(out, "100%") {
		t.Errorf("df does not show the disk full:\n%s", out)
	}
	e.healthy()
	tp, err := e.client.Topic(context.Background(), "orders")
	if err != nil || tp.Retention != "72h0m0s" {
		t.Fatalf("orders after the fix: %+v, %v", tp, err)
	}
	e.produce("after", "after-the-fix")
	waitUntil(t, "a message produced after the fix to be handled", func() bool { return len(e.handledOf("after")) == 1 })
	got := e.handledOf("fill")
	for _, p := range filled {
		if !slices.Contains(got, p) {
			t.Fatalf("an acknowledged message (%.10s...) was never handled", p)
		}
	}
}

// A batch in the middle of the log is damaged: the service does not
// start; the log is cut at the batch as the runbook does it, and the
// service starts with the messages before it.
func corruptionIncident(t *testing.T, e *incident) {
	e.start()
	for i := 1; i <= 6; i++ {
		e.produce("c", fmt.Sprintf("c%d-payload", i))
	}
	waitUntil(t, "the messages handled", func() bool { return len(e.handledOf("c")) == 6 })
	e.svc.stop()
	seg := filepath.Join(e.dir, "wal", "00000000000000000000.seg")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte("c4-payload"))
	if at < 0 {
		t.Fatalf("no c4-payload in %s", seg)
	}
	f, err := os.OpenFile(seg, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("XXXX"), int64(at)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := e.svc.start(); err == nil || !strings.Contains(err.Error(), "corrupt batch in "+seg) {
		t.Fatalf("the service started on a corrupt log: %v", err)
	}
	out := e.run(3) // diagnose; cut; start
	if !regexp.MustCompile(`damaged: .*00000000000000000000\.seg from byte [0-9]+; 1 segment\(s\)`).MatchString(out) {
		t.Fatalf("the diagnosis does not name the damage:\n%s", out)
	}
	if kept, _ := filepath.Glob(e.dir + ".corrupt.*"); len(kept) != 1 {
		t.Errorf("the damaged directory was not kept: %q", kept)
	}
	e.healthy()
	// The log grows back past where the cut was, and the service crashes
	// (no checkpoint on close): a checkpoint of the old log left behind
	// would now seem to fit, and recovery would start from it.
	want := []string{"c1-payload", "c2-payload", "c3-payload"}
	for i := 1; i <= 8; i++ {
		p := fmt.Sprintf("after-the-cut-%d", i)
		e.produce("c", p)
		want = append(want, p)
	}
	waitUntil(t, "the messages after the cut to be handled", func() bool { return slices.Contains(e.handledOf("c"), "after-the-cut-8") })
	if fi, err := os.Stat(seg); err != nil || fi.Size() <= int64(len(b)) {
		t.Fatalf("the log did not grow past its size before the cut (%d): %v, %v", len(b), fi, err)
	}
	e.svc.kill()
	e.start()
	e.healthy()
	e.svc.stop()
	slices.Sort(want)
	if got := e.payloads(); !slices.Equal(got, want) {
		t.Fatalf("orders after the cut and a restart: %q, want %q", got, want)
	}
}

// A copy is taken with the service stopped; later the directory is
// destroyed; the copy is restored, reads back, and the service runs on it
// with the messages and offsets of the copy.
func restoreIncident(t *testing.T, e *incident) {
	e.start()
	e.produce("r", "before-1", "before-2", "before-3")
	waitUntil(t, "the messages handled and committed", func() bool {
		g := e.group()
		return len(e.handledOf("r")) == 3 && len(g.Partitions) == 1 && g.Partitions[0].Lag == 0
	})
	e.run(1) // take the copy
	e.produce("r", "after-1", "after-2")
	waitUntil(t, "the messages after the copy handled", func() bool { return len(e.handledOf("r")) == 5 })
	e.svc.stop()
	// The disk returns garbage where the log begins.
	junk := make([]byte, 4096)
	rand.Read(junk)
	f, err := os.OpenFile(filepath.Join(e.dir, "wal", "00000000000000000000.seg"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(junk, 0)
	f.Close()
	out := e.run(1) // restore
	if !strings.Contains(out, "every topic reads back") {
		t.Fatalf("the restore did not check the copy:\n%s", out)
	}
	if kept, _ := filepath.Glob(e.dir + ".replaced.*"); len(kept) != 1 {
		t.Errorf("the replaced directory was not kept: %q", kept)
	}
	e.healthy()
	g := e.group()
	if len(g.Partitions) != 1 || g.Partitions[0].Committed != 3 || g.Partitions[0].End != 3 {
		t.Errorf("the group after the restore: %+v, want committed 3 of 3 (the copy's)", g.Partitions)
	}
	e.svc.stop()
	if got, want := e.payloads(), []string{"before-1", "before-2", "before-3"}; !slices.Equal(got, want) {
		t.Fatalf("orders after the restore: %q, want the copy's %q", got, want)
	}
}

// A token leaks: the rotation gives its entry a new hash and restarts the
// service; the leaked token gets 401, the new one its roles, the others
// are untouched.
func tokenIncident(t *testing.T, e *incident) {
	opsToken, ciToken := "ops-token-0123456789abcdef", "ci-token-0123456789abcdef"
	hash := func(tok string) string {
		h, err := admin.HashToken(tok)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	cfg := admin.AuthConfig{
		Tokens: []admin.TokenConfig{{Name: "ops", Hash: hash(opsToken), Roles: []string{"admin"}}, {Name: "ci", Hash: hash(ciToken), Roles: []string{"producer"}}},
		Roles: map[string][]admin.Rule{
			"admin":    {{Verbs: []string{"admin"}, Topics: []string{"*"}, Groups: []string{"*"}}},
			"producer": {{Verbs: []string{"read", "produce"}, Topics: []string{"orders"}}},
		},
	}
	raw, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(e.vars["FERRY_AUTH"], raw, 0o600); err != nil {
		t.Fatal(err)
	}
	e.svc.mu.Lock()
	e.svc.auth = true
	e.svc.mu.Unlock()
	e.vars["LEAKED_NAME"], e.vars["LEAKED_TOKEN"] = "ci", ciToken
	e.setToken(ciToken)
	e.start()
	e.produce("ci", "by-the-leaked-token")
	e.setToken(opsToken)
	out := e.run(2) // rotate; hash-token
	if !strings.Contains(out, "topic:orders") || !strings.Contains(out, "produced 1 of 1") {
		t.Errorf("the audit does not show what the leaked token did:\n%s", out)
	}
	m := regexp.MustCompile(`(?m)^new token of ci \(.*\): (\S+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no new token in the output:\n%s", out)
	}
	if !strings.Contains(out, "\n$2a$12$\n") {
		t.Errorf("hash-token did not print a bcrypt hash:\n%s", out)
	}
	status := func(token string) int {
		req, _ := http.NewRequest("GET", e.url+"/api/v1/topics", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(ciToken); got != http.StatusUnauthorized {
		t.Errorf("the leaked token after the rotation: %d, want 401", got)
	}
	if got := status(opsToken); got != http.StatusOK {
		t.Errorf("another token after the rotation: %d, want 200", got)
	}
	e.setToken(m[1])
	e.produce("ci", "by-the-new-token") // the entry's roles stayed
	waitUntil(t, "the new token's message handled", func() bool { return len(e.handledOf("ci")) == 2 })
	if _, err := e.client.CreateTopic(context.Background(), admin.CreateTopic{Name: "not-for-ci", Partitions: 1}); err == nil {
		t.Error("the new token may create topics: the rotation changed its roles")
	}
}
