package vfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

var _ FS = (*MemFS)(nil)

// MemFS is an in-memory filesystem that keeps, for every file, what has been
// synced apart from what has only been written, and for every directory, the
// entries as of its last SyncDir. CrashClone uses this to produce the
// filesystem a power loss would leave behind.
//
// All methods are safe for concurrent use; one mutex guards the whole FS,
// which keeps CrashClone atomic with respect to every other operation.
type MemFS struct {
	mu    sync.Mutex
	dirs  map[string]*memDir
	locks map[string]bool
}

type memDir struct {
	entries map[string]*memNode // as the running system sees them
	durable map[string]*memNode // as of the last SyncDir
}

// memNode is a file. Appending after a Sync is the common case, so the
// synced contents are kept as a length into data until a write or truncate
// touches synced bytes; only then is a copy taken ("detached").
type memNode struct {
	data      []byte // what readers see
	syncedLen int    // with detached false: data[:syncedLen] is durable
	detached  bool   // synced holds the durable contents
	synced    []byte
}

func (n *memNode) syncedBytes() []byte {
	if n.detached {
		return n.synced
	}
	return n.data[:n.syncedLen]
}

// detachBelow keeps a private copy of the synced bytes before data at or
// after off is changed in place.
func (n *memNode) detachBelow(off int64) {
	if !n.detached && off < int64(n.syncedLen) {
		n.synced = append([]byte(nil), n.data[:n.syncedLen]...)
		n.detached = true
	}
}

// NewMemFS returns an empty in-memory filesystem with a root directory "/".
func NewMemFS() *MemFS {
	m := &MemFS{dirs: map[string]*memDir{}, locks: map[string]bool{}}
	m.dirs["/"] = newMemDir()
	return m
}

func newMemDir() *memDir {
	return &memDir{entries: map[string]*memNode{}, durable: map[string]*memNode{}}
}

func clean(name string) string { return filepath.Clean("/" + name) }

func (m *MemFS) dirOfLocked(name string, op string) (*memDir, string, error) {
	p := clean(name)
	d, ok := m.dirs[filepath.Dir(p)]
	if !ok {
		return nil, "", &os.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return d, filepath.Base(p), nil
}

// Create implements FS.
func (m *MemFS) Create(name string) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.dirOfLocked(name, "create")
	if err != nil {
		return nil, err
	}
	if n, ok := d.entries[base]; ok {
		n.detachBelow(0)
		n.data = n.data[:0:0]
		return &memFile{fs: m, node: n, name: name}, nil
	}
	n := &memNode{}
	d.entries[base] = n
	return &memFile{fs: m, node: n, name: name}, nil
}

func (m *MemFS) open(name string, readOnly bool) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.dirOfLocked(name, "open")
	if err != nil {
		return nil, err
	}
	n, ok := d.entries[base]
	if !ok {
		return nil, &os.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{fs: m, node: n, name: name, readOnly: readOnly}, nil
}

// OpenRW implements FS.
func (m *MemFS) OpenRW(name string) (File, error) { return m.open(name, false) }

// Open implements FS.
func (m *MemFS) Open(name string) (File, error) { return m.open(name, true) }

// Remove implements FS.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.dirOfLocked(name, "remove")
	if err != nil {
		return err
	}
	if _, ok := d.entries[base]; !ok {
		return &os.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(d.entries, base)
	return nil
}

// Rename implements FS.
func (m *MemFS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	od, obase, err := m.dirOfLocked(oldname, "rename")
	if err != nil {
		return err
	}
	nd, nbase, err := m.dirOfLocked(newname, "rename")
	if err != nil {
		return err
	}
	n, ok := od.entries[obase]
	if !ok {
		return &os.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	delete(od.entries, obase)
	nd.entries[nbase] = n
	return nil
}

// MkdirAll implements FS. Directories are durable at once (ferry creates
// them before it writes anything that depends on them).
func (m *MemFS) MkdirAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p := clean(dir); ; p = filepath.Dir(p) {
		if _, ok := m.dirs[p]; !ok {
			m.dirs[p] = newMemDir()
		}
		if p == "/" {
			return nil
		}
	}
}

// List implements FS.
func (m *MemFS) List(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := clean(dir)
	d, ok := m.dirs[p]
	if !ok {
		return nil, &os.PathError{Op: "list", Path: dir, Err: fs.ErrNotExist}
	}
	var names []string
	for n := range d.entries {
		names = append(names, n)
	}
	for sub := range m.dirs {
		if sub != p && filepath.Dir(sub) == p {
			names = append(names, filepath.Base(sub))
		}
	}
	sort.Strings(names)
	return names, nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.dirs[clean(dir)]
	if !ok {
		return &os.PathError{Op: "syncdir", Path: dir, Err: fs.ErrNotExist}
	}
	d.durable = make(map[string]*memNode, len(d.entries))
	for k, v := range d.entries {
		d.durable[k] = v
	}
	return nil
}

type memLock struct {
	m    *MemFS
	name string
}

func (l memLock) Close() error {
	l.m.mu.Lock()
	defer l.m.mu.Unlock()
	delete(l.m.locks, l.name)
	return nil
}

// Lock implements FS. Locks are held per MemFS (they model one machine).
func (m *MemFS) Lock(name string) (io.Closer, error) {
	m.mu.Lock()
	p := clean(name)
	if m.locks[p] {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrLockHeld, name)
	}
	m.locks[p] = true
	m.mu.Unlock()
	// The lock file exists on disk, like its OS counterpart.
	if _, err := m.Stat(name); err != nil {
		f, err := m.Create(name)
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	return memLock{m, p}, nil
}

type memInfo struct {
	name string
	size int64
	dir  bool
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o644 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return i.dir }
func (i memInfo) Sys() any           { return nil }

// Stat implements FS.
func (m *MemFS) Stat(name string) (os.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := clean(name)
	if _, ok := m.dirs[p]; ok {
		return memInfo{name: filepath.Base(p), dir: true}, nil
	}
	d, base, err := m.dirOfLocked(name, "stat")
	if err != nil {
		return nil, err
	}
	n, ok := d.entries[base]
	if !ok {
		return nil, &os.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return memInfo{name: base, size: int64(len(n.data))}, nil
}

// CrashClone returns the filesystem a power loss at this instant would leave.
//
// With rng nil the clone is strict: every file holds exactly its synced
// bytes and every directory exactly its synced entries. With an rng it is
// what real disks do: each file keeps a random prefix of the bytes written
// since its last sync (sometimes zeroed, as when the size reached disk but
// the data did not), and each unsynced directory change survives or not by a
// coin flip. Locks are not carried over: the process that held them is gone.
func (m *MemFS) CrashClone(rng *rand.Rand) *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := &MemFS{dirs: map[string]*memDir{}, locks: map[string]bool{}}
	cloned := map[*memNode]*memNode{}
	cloneNode := func(n *memNode) *memNode {
		if cn, ok := cloned[n]; ok {
			return cn
		}
		data := crashContent(n, rng)
		cn := &memNode{data: data, syncedLen: len(data)}
		cloned[n] = cn
		return cn
	}
	// Deterministic iteration order so a seed reproduces the same clone.
	paths := make([]string, 0, len(m.dirs))
	for p := range m.dirs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		d := m.dirs[p]
		cd := newMemDir()
		names := map[string]bool{}
		for k := range d.entries {
			names[k] = true
		}
		for k := range d.durable {
			names[k] = true
		}
		sorted := make([]string, 0, len(names))
		for k := range names {
			sorted = append(sorted, k)
		}
		sort.Strings(sorted)
		for _, name := range sorted {
			cur, durable := d.entries[name], d.durable[name]
			pick := durable
			if cur != durable && rng != nil && rng.IntN(2) == 0 {
				pick = cur // the unsynced change happened to reach disk
			}
			if pick != nil {
				cn := cloneNode(pick)
				cd.entries[name] = cn
				cd.durable[name] = cn
			}
		}
		c.dirs[p] = cd
	}
	return c
}

// crashContent decides what a file holds after a crash.
func crashContent(n *memNode, rng *rand.Rand) []byte {
	synced := n.syncedBytes()
	if rng == nil {
		return append([]byte(nil), synced...)
	}
	data := n.data
	// Common case: data is the synced bytes plus an unsynced tail.
	if len(data) >= len(synced) && string(data[:len(synced)]) == string(synced) {
		extra := len(data) - len(synced)
		if extra == 0 {
			return append([]byte(nil), synced...)
		}
		keep := rng.IntN(extra + 1)
		out := append(append([]byte(nil), synced...), data[len(synced):len(synced)+keep]...)
		if keep > 0 && rng.IntN(4) == 0 {
			// The size reached disk, the last block's contents did not.
			from := len(synced) + rng.IntN(keep)
			for i := from; i < len(out); i++ {
				out[i] = 0
			}
		}
		return out
	}
	// The file was truncated or overwritten since its last sync: either
	// version may be what reached disk.
	if rng.IntN(2) == 0 {
		return append([]byte(nil), data...)
	}
	return append([]byte(nil), synced...)
}

// FlipBit flips one bit of the named file, in both its written and synced
// contents (as bit rot on the medium would). It is a test helper.
func (m *MemFS) FlipBit(name string, offset int64, bit uint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, base, err := m.dirOfLocked(name, "flipbit")
	if err != nil {
		return err
	}
	n, ok := d.entries[base]
	if !ok {
		return &os.PathError{Op: "flipbit", Path: name, Err: fs.ErrNotExist}
	}
	if offset < 0 || offset >= int64(len(n.data)) {
		return fmt.Errorf("vfs: flipbit %s: offset %d outside file of %d bytes", name, offset, len(n.data))
	}
	n.data[offset] ^= 1 << (bit % 8)
	if n.detached && offset < int64(len(n.synced)) {
		n.synced[offset] ^= 1 << (bit % 8)
	}
	return nil
}

type memFile struct {
	fs       *MemFS
	node     *memNode
	name     string
	pos      int64
	readOnly bool
	closed   bool
}

var errClosed = errors.New("vfs: file already closed")

func (f *memFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errClosed
	}
	if f.readOnly {
		return 0, &os.PathError{Op: "write", Path: f.name, Err: fs.ErrPermission}
	}
	n := f.node
	n.detachBelow(f.pos)
	end := f.pos + int64(len(p))
	if end > int64(len(n.data)) {
		if end > int64(cap(n.data)) {
			grown := make([]byte, end, max(end, 2*int64(cap(n.data))))
			copy(grown, n.data)
			n.data = grown
		}
		n.data = n.data[:end]
	}
	copy(n.data[f.pos:end], p)
	f.pos = end
	return len(p), nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, errClosed
	}
	if off >= int64(len(f.node.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.node.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return errClosed
	}
	f.closed = true
	return nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return errClosed
	}
	f.node.detached, f.node.synced, f.node.syncedLen = false, nil, len(f.node.data)
	return nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return errClosed
	}
	n := f.node
	n.detachBelow(size)
	if size <= int64(len(n.data)) {
		n.data = n.data[:size:size]
	} else {
		n.data = append(n.data, make([]byte, size-int64(len(n.data)))...)
	}
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	return int64(len(f.node.data)), nil
}

func (f *memFile) Seek(offset int64, whence int) (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	switch whence {
	case io.SeekStart:
		f.pos = offset
	case io.SeekCurrent:
		f.pos += offset
	case io.SeekEnd:
		f.pos = int64(len(f.node.data)) + offset
	}
	return f.pos, nil
}
