// Package commitlog is ferry's embedded durable log: topics of ordered
// partitions in one directory, written by one process and read by any
// number, with every acknowledged record fsynced before the call that
// wrote it returns.
//
// # Writing
//
// [Open] a directory, [Log.CreateTopic], then [Log.Append] messages or
// [Log.Commit] a [Batch]: a batch is atomic (every message and any
// consumer offsets in it become visible together, or none do, whatever
// the crash). Concurrent writers share fsyncs (group commit), so many
// small synchronous appends cost about one fsync per round, not one each;
// [Log.AppendAsync] and [Log.CommitAsync] pipeline without a goroutine per
// write. A message's partition follows from its key; its ID, when already
// in the topic's deduplication window, makes the append a no-op
// ([Batch].Duplicates counts them). [WithDurability] trades the fsync for
// speed where that is acceptable.
//
// # Reading
//
// [Log.Read] and [Log.Fetch] (which waits for new messages) read a
// partition from an offset; [Log.Bounds] and [Log.OffsetForTime] find
// where to start. A read-only [Open] ([WithReadOnly]) works beside the
// owning process and sees what it acknowledged.
//
// # Keeping the log small
//
// [Log.Clean] applies each topic's retention (age, size) and compaction
// (the latest record of each key), leaving anything inside the dedup
// window. Consumer offsets ([Log.CommitOffsets], or a Batch's Offsets)
// are stored in the log itself and survive every crash with it.
//
// # Recovery
//
// Opening after a crash replays from the last checkpoint, cuts a torn
// tail (reported in [Log.Recovery]) and refuses, with [ferry.ErrCorrupt]
// naming the file and offset, anything it cannot prove intact. The
// filesystem is a seam ([WithFS], package vfs) so that crash tests run
// the same code over a fault-injecting in-memory filesystem.
package commitlog
