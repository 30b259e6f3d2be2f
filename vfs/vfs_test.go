package vfs

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func write(t *testing.T, fs FS, name, data string, sync bool) File {
	t.Helper()
	f, err := fs.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte(data)); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func contents(t *testing.T, fs FS, name string) (string, bool) {
	t.Helper()
	f, err := fs.Open(name)
	if err != nil {
		return "", false
	}
	defer f.Close()
	n, _ := f.Size()
	b := make([]byte, n)
	f.ReadAt(b, 0)
	return string(b), true
}

// A strict crash keeps exactly what was synced: file data after Sync,
// directory entries after SyncDir.
func TestMemFSCrashDropsUnsynced(t *testing.T) {
	m := NewMemFS()
	m.MkdirAll("/d")
	f := write(t, m, "/d/a", "synced", true)
	m.SyncDir("/d")
	f.Write([]byte("+unsynced"))
	write(t, m, "/d/b", "file whose entry was never synced", true)
	c := m.CrashClone(nil)
	if got, _ := contents(t, c, "/d/a"); got != "synced" {
		t.Errorf("a after crash = %q, want only the synced bytes", got)
	}
	if _, ok := contents(t, c, "/d/b"); ok {
		t.Errorf("b survived a crash although its directory entry was never synced")
	}
	// Renames, too, need a directory sync.
	m.Rename("/d/a", "/d/c")
	c = m.CrashClone(nil)
	if _, ok := contents(t, c, "/d/c"); ok {
		t.Errorf("unsynced rename survived the crash")
	}
	m.SyncDir("/d")
	c = m.CrashClone(nil)
	if got, ok := contents(t, c, "/d/c"); !ok || got != "synced" {
		t.Errorf("synced rename lost: %q %v", got, ok)
	}
}

// An overwrite or truncate of synced bytes is not durable until synced.
func TestMemFSCrashKeepsSyncedVersionOnOverwrite(t *testing.T) {
	m := NewMemFS()
	f := write(t, m, "/a", "0123456789", true)
	m.SyncDir("/")
	f.Truncate(3)
	if got := func() string { s, _ := contents(t, m, "/a"); return s }(); got != "012" {
		t.Fatalf("live view %q", got)
	}
	if got, _ := contents(t, m.CrashClone(nil), "/a"); got != "0123456789" {
		t.Errorf("crash after unsynced truncate = %q", got)
	}
}

// With an rng, a crash keeps a prefix of unsynced appends, never bytes that
// were not written.
func TestMemFSRandomCrashKeepsPrefix(t *testing.T) {
	for seed := uint64(0); seed < 50; seed++ {
		m := NewMemFS()
		f := write(t, m, "/a", "abc", true)
		m.SyncDir("/")
		f.Write([]byte("defgh"))
		got, _ := contents(t, m.CrashClone(rand.New(rand.NewPCG(seed, 0))), "/a")
		if len(got) < 3 || len(got) > 8 || got[:3] != "abc" {
			t.Fatalf("seed %d: %q", seed, got)
		}
		for i := 3; i < len(got); i++ {
			if got[i] != "abcdefgh"[i] && got[i] != 0 {
				t.Fatalf("seed %d: invented byte in %q", seed, got)
			}
		}
	}
}

func TestFaultFSInjectsAndCrashes(t *testing.T) {
	m := NewMemFS()
	f := NewFaultFS(m)
	f.SetInjector(func(op Op, path string, seq int64) error {
		if op == OpSync {
			return EIO
		}
		return nil
	})
	file := write(t, f, "/a", "x", false)
	if err := file.Sync(); !errors.Is(err, EIO) {
		t.Fatalf("sync: %v", err)
	}
	f.SetInjector(nil)
	f.CrashAt(f.MutatingOps()+1, nil)
	if _, err := file.Write([]byte("y")); !errors.Is(err, ErrCrashed) {
		t.Fatalf("write at the crash point: %v", err)
	}
	if _, err := f.Create("/b"); !errors.Is(err, ErrCrashed) {
		t.Fatalf("create after crash: %v", err)
	}
	if f.Crashed() == nil {
		t.Fatal("no crash image")
	}
}

func TestFaultFSTornWrite(t *testing.T) {
	m := NewMemFS()
	f := NewFaultFS(m)
	f.TearWrites(rand.New(rand.NewPCG(1, 1)))
	file := write(t, f, "/a", "", false)
	f.SetInjector(func(op Op, path string, seq int64) error {
		if op == OpWrite {
			return ENOSPC
		}
		return nil
	})
	n, err := file.Write([]byte("0123456789"))
	if !errors.Is(err, ENOSPC) || n >= 10 {
		t.Fatalf("torn write: n=%d err=%v", n, err)
	}
	if got, _ := contents(t, m, "/a"); len(got) != n {
		t.Fatalf("file holds %q after a torn write of %d bytes", got, n)
	}
}

func TestOSLockIsExclusive(t *testing.T) {
	p := t.TempDir() + "/LOCK"
	l, err := Default.Lock(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Default.Lock(p); !errors.Is(err, ErrLockHeld) {
		t.Fatalf("second lock: %v", err)
	}
	l.Close()
	l2, err := Default.Lock(p)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Close()
}
