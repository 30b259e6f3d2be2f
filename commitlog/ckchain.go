package commitlog

import (
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// The checkpoint chain on disk: bases are <seg>-<pos>.ckpt, deltas
// <seg>-<pos>.delta (see checkpoint).
const (
	deltaSuffix = ".delta"
	// The compactor folds the deltas into a new base once they hold more
	// bytes than the base (and at least minCompactBytes), or once there
	// are maxDeltas of them: so checkpoint writes cost at most about twice
	// what changed, and recovery reads at most about twice the state.
	minCompactBytes = 256 << 10
	maxDeltas       = 64
)

func checkpointName(seg uint32, pos uint64) string {
	return fmt.Sprintf("%020d-%020d%s", seg, pos, ckptSuffix)
}

func deltaName(seg uint32, pos uint64) string {
	return fmt.Sprintf("%020d-%020d%s", seg, pos, deltaSuffix)
}

// ckFile is one checkpoint file of the directory listing.
type ckFile struct {
	name  string
	seg   uint32
	pos   uint64
	delta bool
}

func (f ckFile) before(g ckFile) bool { return f.seg < g.seg || f.seg == g.seg && f.pos < g.pos }

// listCheckpoints returns the checkpoint files, oldest position first.
func (l *Log) listCheckpoints() []ckFile {
	names, err := l.cfg.fs.List(filepath.Join(l.dir, checkpointDir))
	if err != nil {
		return nil
	}
	var out []ckFile
	for _, n := range names {
		f := ckFile{name: n}
		var rest string
		switch {
		case strings.HasSuffix(n, ckptSuffix):
			rest = strings.TrimSuffix(n, ckptSuffix)
		case strings.HasSuffix(n, deltaSuffix):
			rest, f.delta = strings.TrimSuffix(n, deltaSuffix), true
		default:
			continue
		}
		segStr, posStr, ok := strings.Cut(rest, "-")
		seg, err1 := strconv.ParseUint(segStr, 10, 32)
		pos, err2 := strconv.ParseUint(posStr, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		f.seg, f.pos = uint32(seg), pos
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].before(out[j]) || !out[j].before(out[i]) && !out[i].delta && out[j].delta
	})
	return out
}

func (l *Log) readCheckpoint(f ckFile) (*checkpoint, int, error) {
	b, err := l.readFile(filepath.Join(l.dir, checkpointDir, f.name))
	if err != nil {
		return nil, 0, err
	}
	ck, err := decodeCheckpoint(b)
	if err != nil {
		return nil, 0, err
	}
	if ck.seg != f.seg || ck.pos != f.pos || ck.delta != f.delta {
		return nil, 0, fmt.Errorf("checkpoint %s holds the state at %d:%d (delta %v)", f.name, ck.seg, ck.pos, ck.delta)
	}
	return ck, len(b), nil
}

// chain is a base and the deltas that follow it, composed.
type chain struct {
	state      *checkpoint
	tip        ckFile // the last file composed
	files      []ckFile
	baseBytes  int
	deltaBytes int
}

// loadChain composes the chain that starts at base: each next delta is
// the newest one whose prev position is the state so far (a delta that
// does not decode, or does not fit, ends the chain there: recovery then
// replays the log from the last good position).
func (l *Log) loadChain(base ckFile, files []ckFile) (*chain, error) {
	ck, n, err := l.readCheckpoint(base)
	if err != nil {
		return nil, err
	}
	if ck.delta {
		return nil, fmt.Errorf("checkpoint %s is a delta, not a base", base.name)
	}
	c := &chain{state: ck, tip: base, files: []ckFile{base}, baseBytes: n}
	for {
		var next *checkpoint
		var nextFile ckFile
		nextBytes := 0
		for _, f := range files {
			if !f.delta || !c.tip.before(f) {
				continue
			}
			d, n, err := l.readCheckpoint(f)
			if err != nil {
				l.cfg.logger.Warn("skipping unreadable checkpoint delta", "file", f.name, "err", err)
				continue
			}
			if d.prevSeg == c.state.seg && d.prevPos == c.state.pos {
				next, nextFile, nextBytes = d, f, n // files are in order: the newest wins
			}
		}
		if next == nil {
			return c, nil
		}
		st, err := c.state.follow(next)
		if err != nil {
			l.cfg.logger.Warn("checkpoint delta does not follow its base", "file", nextFile.name, "err", err)
			return c, nil
		}
		c.state, c.tip = st, nextFile
		c.files = append(c.files, nextFile)
		c.deltaBytes += nextBytes
	}
}

// loadCheckpoint returns the state of the newest checkpoint chain that
// decodes and fits the segments on disk, and the name of its last file.
func (l *Log) loadCheckpoint(ids []uint32) (*checkpoint, string) {
	files := l.listCheckpoints()
	for i := len(files) - 1; i >= 0; i-- {
		if files[i].delta {
			continue
		}
		c, err := l.loadChain(files[i], files)
		if err != nil {
			l.cfg.logger.Warn("skipping unreadable checkpoint", "file", files[i].name, "err", err)
			continue
		}
		if !l.checkpointFits(c.state, ids) {
			l.cfg.logger.Warn("skipping checkpoint ahead of the log", "file", c.tip.name)
			continue
		}
		l.ckBaseBytes.Store(int64(c.baseBytes))
		l.ckDeltaBytes.Store(int64(c.deltaBytes))
		l.ckDeltas.Store(int32(len(c.files) - 1))
		return c.state, c.tip.name
	}
	return nil, ""
}

// runCheckpointCompactor folds the deltas into a new base when the writer
// asks (see writeCheckpoint), until the log closes. It reads and writes
// only checkpoint files, so appends never wait for it.
func (l *Log) runCheckpointCompactor() {
	defer close(l.ckDone)
	for {
		select {
		case <-l.stop:
			return
		case <-l.ckKick:
			if err := l.compactCheckpoints(); err != nil {
				l.cfg.logger.Warn("compacting checkpoints failed; the deltas stay", "err", err)
			}
		}
	}
}

// compactCheckpoints writes the state of the newest chain as a base at its
// tip, then removes every checkpoint file before it. The writer goes on
// writing deltas meanwhile: they follow the tip, which the new base
// replaces under the same position.
func (l *Log) compactCheckpoints() error {
	files := l.listCheckpoints()
	var c *chain
	for i := len(files) - 1; i >= 0 && c == nil; i-- {
		if !files[i].delta {
			var err error
			if c, err = l.loadChain(files[i], files); err != nil {
				c = nil
			}
		}
	}
	if c == nil || len(c.files) == 1 {
		return nil
	}
	c.state.delta, c.state.prevSeg, c.state.prevPos = false, 0, 0
	b := encodeCheckpoint(c.state)
	dir := filepath.Join(l.dir, checkpointDir)
	if err := l.replaceFile(filepath.Join(dir, checkpointName(c.tip.seg, c.tip.pos)), b); err != nil {
		return err
	}
	l.ckBaseBytes.Store(int64(len(b)))
	l.ckDeltaBytes.Add(-int64(c.deltaBytes))
	l.ckDeltas.Add(-int32(len(c.files) - 1))
	for _, f := range files {
		if f.before(c.tip) || f == c.tip {
			if err := l.cfg.fs.Remove(filepath.Join(dir, f.name)); err != nil {
				l.cfg.logger.Warn("removing an old checkpoint failed", "file", f.name, "err", err)
			}
		}
	}
	return nil
}

// removeTemporaries removes what a crash left of checkpoint files being
// written (Open calls it, before anything writes one).
func (l *Log) removeTemporaries() {
	dir := filepath.Join(l.dir, checkpointDir)
	names, _ := l.cfg.fs.List(dir)
	for _, n := range names {
		if strings.HasSuffix(n, tmpSuffix) {
			if err := l.cfg.fs.Remove(filepath.Join(dir, n)); err != nil {
				l.cfg.logger.Warn("removing a partly written checkpoint failed", "file", n, "err", err)
			}
		}
	}
}
