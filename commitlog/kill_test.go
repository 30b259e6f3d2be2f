package commitlog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// The kill test runs this test binary again as a child process that appends
// under load until it is killed.
const childEnv = "FERRY_COMMITLOG_KILL_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		runAppendChild(dir)
		return
	}
	os.Exit(m.Run())
}

// runAppendChild appends from 8 goroutines forever, printing "try" before
// and "ack" after each append. Producer IDs are unique per child run.
func runAppendChild(dir string) {
	run, _ := strconv.Atoi(os.Getenv("FERRY_RUN"))
	l, err := Open(context.Background(), dir, WithSegmentBytes(1<<20), WithMaxGroupBytes(64<<10), WithMaxBatchBytes(64<<10), WithMaxMessageBytes(4<<10))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if err := l.CreateTopic(context.Background(), "t", TopicConfig{Partitions: 4}); err != nil && !errors.Is(err, ferry.ErrTopicExists) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	var out sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	print := func(format string, args ...any) {
		out.Lock()
		fmt.Fprintf(w, format, args...)
		w.Flush()
		out.Unlock()
	}
	print("ready %d\n", os.Getpid())
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			producer := run*100 + g
			for s := 0; ; s++ {
				m := msg("t", fmt.Sprint("key", producer), payloadFor(producer, s))
				m.Headers = []ferry.Header{{Key: "pad", Value: make([]byte, 200)}}
				print("try %s\n", m.Payload)
				if err := l.Append(context.Background(), m); err != nil {
					print("error %v\n", err)
					return
				}
				print("ack %s %s %d %d\n", m.ID, m.Payload, m.Partition, m.Offset)
			}
		}(g)
	}
	wg.Wait()
	os.Exit(1)
}

// TestKill9UnderLoad kills a real appending process with SIGKILL at random
// moments, 20 times, and after each restart verifies that every
// acknowledged message is present once, at its offset, in order per key.
func TestKill9UnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("kill -9 test runs real processes; skipped with -short")
	}
	dir := t.TempDir()
	v := newVerifier()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	const runs = 20
	for run := 0; run < runs; run++ {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+dir, fmt.Sprintf("FERRY_RUN=%d", run))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := bufio.NewScanner(stdout)
		if !lines.Scan() || !strings.HasPrefix(lines.Text(), "ready") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("run %d: child did not start: %q", run, lines.Text())
		}
		if run == 0 {
			// While the child owns the directory, a second writer is refused
			// with the owner's PID.
			_, err := Open(context.Background(), dir)
			if !errors.Is(err, ferry.ErrLocked) || !strings.Contains(err.Error(), strconv.Itoa(cmd.Process.Pid)) {
				t.Errorf("open while child holds the lock: %v", err)
			}
		}
		acks := 0
		done := make(chan struct{})
		go func() {
			defer close(done)
			for lines.Scan() {
				f := strings.Fields(lines.Text())
				switch f[0] {
				case "try":
					v.attempt(f[1])
				case "ack":
					id, _ := ferry.ParseID(f[1])
					p, _ := strconv.Atoi(f[3])
					o, _ := strconv.ParseUint(f[4], 10, 64)
					v.mu.Lock()
					v.acked[id] = ackedMsg{int32(p), o, f[2]}
					v.mu.Unlock()
					acks++
				case "error":
					t.Errorf("child: %s", lines.Text())
				}
			}
		}()
		time.Sleep(time.Duration(20+rng.IntN(300)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		<-done
		cmd.Wait()
		l, err := Open(context.Background(), dir, WithFS(vfs.Default), WithReadOnly())
		if err != nil {
			t.Fatalf("run %d: reopen after SIGKILL: %v", run, err)
		}
		found := v.check(t, l, "t")
		l.Close()
		t.Logf("run %d: %d acks this run, %d acknowledged in all, %d messages in the log", run, acks, len(v.acked), found)
	}
	if len(v.acked) == 0 {
		t.Fatal("no append was acknowledged in any run")
	}
}
