// Package vfs is the filesystem seam every byte of ferry's storage goes
// through. Three implementations exist: the operating system's ([Default]),
// an in-memory one that can be cloned "as after a power loss" ([MemFS]), and
// a wrapper that injects faults into any FS ([FaultFS]). Crash safety is
// tested by running the log over FaultFS(MemFS), crashing at the k-th
// operation for many k, reopening the clone and verifying.
//
// Durability contract (what the log relies on, and what MemFS models):
//   - File.Write data is durable only after File.Sync returns nil.
//   - Creating, removing or renaming a file is durable only after the
//     containing directory has been synced with SyncDir.
//   - After Sync or SyncDir fails, the state of the file is unknown; callers
//     must not assume the data is durable, nor retry the sync and trust it.
package vfs

import (
	"io"
	"os"
)

// File is an open file.
type File interface {
	io.Writer
	io.ReaderAt
	io.Closer
	// Sync makes everything written so far durable.
	Sync() error
	// Truncate changes the size of the file.
	Truncate(size int64) error
	// Size returns the current size of the file.
	Size() (int64, error)
	// Seek sets the offset for the next Write (io.SeekStart, io.SeekEnd).
	Seek(offset int64, whence int) (int64, error)
}

// FS is the filesystem interface.
type FS interface {
	// Create creates or truncates the named file for reading and writing.
	Create(name string) (File, error)
	// OpenRW opens an existing file for reading and writing, positioned at
	// its start.
	OpenRW(name string) (File, error)
	// Open opens an existing file read-only.
	Open(name string) (File, error)
	// Remove removes a file.
	Remove(name string) error
	// Rename renames a file, replacing newname if it exists.
	Rename(oldname, newname string) error
	// MkdirAll creates a directory and its parents.
	MkdirAll(dir string) error
	// List returns the names (not paths) of the entries in dir, sorted.
	List(dir string) ([]string, error)
	// SyncDir makes creations, removals and renames in dir durable.
	SyncDir(dir string) error
	// Lock takes an exclusive advisory lock on the named file (creating it),
	// failing at once if another holder has it. Closing the returned value
	// releases the lock.
	Lock(name string) (io.Closer, error)
	// Stat reports whether name exists and its size.
	Stat(name string) (os.FileInfo, error)
}
