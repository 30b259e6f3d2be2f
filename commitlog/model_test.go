package commitlog

// Model-based crash harness.
//
// A seed generates a sequence of steps over everything the log does
// (appends, async appends, multi-topic commits with consumer offsets, topic
// creation and deletion, offset commits, cleaning, clock steps forward and
// back, Sync, Close+reopen, power loss, a read-only Open beside the writer,
// Close racing appends, retries of earlier message IDs, injected EIO and
// ENOSPC). The harness runs the steps against a Log over FaultFS(MemFS)
// and, beside it, an in-memory model of what the log acknowledged:
//
//   - per topic and partition, offset -> (ID, key, payload, append time) of
//     every acknowledged record, and which of them the cleaner may remove;
//   - the committed offset of every group;
//   - the IDs in each topic's deduplication window.
//
// Operations that failed (the log was stopped by an injected error or a
// crash) are "in doubt": after the reopen, the harness looks at the log and
// adopts what it finds of them, checking that a batch is there whole or not
// at all. From then on an adopted record is as binding as an acknowledged
// one: readers have seen it.
//
// Invariants, checked after every step of the reference run and after
// every reopen:
//   - every acknowledged record is present once, at its offset, with its
//     bytes, unless the cleaner was allowed to remove it; a removed record
//     never comes back and the partition start never goes backwards;
//   - nothing is there that was never written (no phantom offsets: Bounds'
//     end is the last acknowledged offset + 1, Fetch at the end sees
//     nothing);
//   - Read is monotonic, returns no offset twice, stays in [start, end);
//   - committed offsets and topics are those last acknowledged;
//   - a retry of an ID inside its dedup window is reported as a duplicate
//     at its original offset, also after a reopen;
//   - OffsetForTime returns the first record at or after the time;
//   - a read-only Open beside the writer never reports corruption;
//   - no call blocks forever (Close racing appends).
//
// Crash points: a reference run of the sequence records how many mutating
// filesystem operations each step issues; a crash point is (step, k): power
// loss just before the k-th mutating operation of that step (FaultFS.
// CrashAt), with the strict clone (only synced bytes survive) or a random
// one. Every operation of every step is a candidate (appends, rolls,
// checkpoint writes, Clean, Close, Open's recovery...). After the crash the
// harness reopens, checks, runs three more steps, retries recent IDs, loses
// power again (strict) and checks once more.
//
// Knobs (environment):
//
//	FERRY_MODEL_SEEDS    number of seeds (default 12, -short 2)
//	FERRY_MODEL_CRASHES  crash points per seed, sampled evenly (default 400,
//	                     -short 120; "all" or -1: every mutating operation)
//	FERRY_MODEL_STEPS    steps per sequence (default 100, -short 40)
//	FERRY_MODEL_VERBOSE  log the reference runs and failing runs step by step
//	FERRY_MODEL_SEED     run only this seed (as printed by a failure)
//	FERRY_MODEL_POINT    with FERRY_MODEL_SEED: only this crash point,
//	                     "step:k:strict" or "step:k:random"
//	FERRY_MODEL_SHRINK   0 turns shrinking off
//	FERRY_MODEL_FAILS    distinct failures to report before stopping (default 12)

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/vfs"
)

// ---------------------------------------------------------------------------
// Knobs

type modelKnobs struct {
	seeds, crashes, steps, maxFails int
	onlySeed                        int64 // -1: all
	onlyPoint                       *crashPoint
	shrink                          bool
}

func envInt(name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	if s == "all" {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(fmt.Sprintf("%s=%q: %v", name, s, err))
	}
	return n
}

func modelKnobsFromEnv(t *testing.T) modelKnobs {
	k := modelKnobs{seeds: 12, crashes: 400, steps: 100, maxFails: 12, onlySeed: -1, shrink: true}
	if testing.Short() {
		k.seeds, k.crashes, k.steps = 2, 120, 40
	}
	k.seeds = envInt("FERRY_MODEL_SEEDS", k.seeds)
	k.crashes = envInt("FERRY_MODEL_CRASHES", k.crashes)
	k.steps = envInt("FERRY_MODEL_STEPS", k.steps)
	k.maxFails = envInt("FERRY_MODEL_FAILS", k.maxFails)
	k.shrink = os.Getenv("FERRY_MODEL_SHRINK") != "0"
	if s := os.Getenv("FERRY_MODEL_SEED"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_MODEL_SEED=%q: %v", s, err)
		}
		k.onlySeed = n
	}
	if s := os.Getenv("FERRY_MODEL_POINT"); s != "" {
		var cp crashPoint
		var mode string
		parts := strings.Split(s, ":")
		if len(parts) != 3 {
			t.Fatalf("FERRY_MODEL_POINT=%q: want step:k:strict|random", s)
		}
		var err1, err2 error
		cp.step, err1 = strconv.Atoi(parts[0])
		cp.k, err2 = strconv.ParseInt(parts[1], 10, 64)
		mode = parts[2]
		if err1 != nil || err2 != nil || (mode != "strict" && mode != "random") {
			t.Fatalf("FERRY_MODEL_POINT=%q: want step:k:strict|random", s)
		}
		cp.random = mode == "random"
		k.onlyPoint = &cp
	}
	return k
}

// ---------------------------------------------------------------------------
// The test

// TestModelCrashSweep runs each seed's sequence once as a reference (checking
// the model after every step), then again crashing at sampled crash points
// of that run, and reports every distinct kind of violation, shrunk.
func TestModelCrashSweep(t *testing.T) {
	k := modelKnobsFromEnv(t)
	start := time.Now()
	reported := map[string]bool{}
	var points, fails int
	seeds := make([]uint64, 0, k.seeds)
	if k.onlySeed >= 0 {
		seeds = append(seeds, uint64(k.onlySeed))
	} else {
		for i := 0; i < k.seeds; i++ {
			seeds = append(seeds, uint64(i+1))
		}
	}
	report := func(seed uint64, steps []mstep, cp *crashPoint, v *violation) {
		fails++
		reported[v.kind] = true
		if k.shrink {
			steps, cp, v = shrinkFailure(seed, steps, cp, v)
		}
		t.Errorf("%s", formatFailure(seed, steps, cp, v))
	}
	for _, seed := range seeds {
		if fails >= k.maxFails {
			break
		}
		steps := genSteps(seed, k.steps)
		ref := newModelRun(seed, steps, nil)
		ref.checkEvery = true
		verr := ref.run()
		if os.Getenv("FERRY_MODEL_VERBOSE") != "" {
			for i, st := range steps {
				t.Logf("seed %d step %d (%d ops): %s", seed, i, ref.opsPerStep[i], st)
			}
			for _, line := range ref.trace {
				t.Logf("seed %d trace: %s", seed, line)
			}
			t.Logf("seed %d: reference run: %v; records %v", seed, verr, ref.ends())
		}
		limit := len(steps)
		if verr != nil {
			if k.onlyPoint == nil && !reported[verr.kind] {
				report(seed, steps, nil, verr)
			}
			limit = verr.step // crash points only before the failure
		}
		var cands []crashPoint
		if k.onlyPoint != nil {
			cands = []crashPoint{*k.onlyPoint}
		} else {
			cands = sampleCrashPoints(seed, ref.opsPerStep[:limit], k.crashes)
		}
		for _, cp := range cands {
			if fails >= k.maxFails {
				break
			}
			points++
			cp := cp
			r := newModelRun(seed, steps, &cp)
			if v := r.run(); v != nil && (k.onlyPoint != nil || !reported[v.kind]) {
				if os.Getenv("FERRY_MODEL_VERBOSE") != "" {
					for _, line := range r.trace {
						t.Logf("seed %d point %s trace: %s", seed, &cp, line)
					}
				}
				report(seed, steps, &cp, v)
			}
		}
	}
	t.Logf("%d seeds, %d crash points, %d distinct failures, in %v", len(seeds), points, fails, time.Since(start).Round(time.Millisecond))
}

// sampleCrashPoints returns up to n crash points spread evenly over the
// mutating operations of the reference run (all of them with n < 0),
// alternating strict and random power-loss clones.
func sampleCrashPoints(seed uint64, opsPerStep []int64, n int) []crashPoint {
	var total int64
	for _, c := range opsPerStep {
		total += c
	}
	if total == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 0xc4a54))
	var picks []int64
	if n < 0 || int64(n) >= total {
		for i := int64(0); i < total; i++ {
			picks = append(picks, i)
		}
	} else {
		stride := float64(total) / float64(n)
		for i := 0; i < n; i++ {
			picks = append(picks, int64(float64(i)*stride+rng.Float64()*stride))
		}
	}
	var out []crashPoint
	for i, p := range picks {
		step := 0
		for p >= opsPerStep[step] {
			p -= opsPerStep[step]
			step++
		}
		out = append(out, crashPoint{step: step, k: p + 1, random: i%2 == 1})
	}
	return out
}

// ---------------------------------------------------------------------------
// Steps

type mstepKind uint8

const (
	kOpen            mstepKind = iota // the first Open
	kAppend                           // Append, waiting for it
	kAsync                            // several AppendAsync, then wait for every promise
	kCommit                           // Commit of a multi-topic batch with consumer offsets
	kOffsets                          // CommitOffsets
	kCreate                           // CreateTopic
	kDelete                           // DeleteTopic
	kClean                            // Clean
	kClock                            // move the clock
	kSync                             // Sync
	kReopen                           // Close, Open
	kCrash                            // power loss between steps, Open
	kReadOnly                         // a read-only Open and full read beside appends
	kCloseRace                        // appends racing Close, then Open
	kDropCheckpoints                  // Close, remove every checkpoint (they are a cache), Open
	kAlter                            // AlterTopic: new retention
	kDeleteOffsets                    // DeleteOffsets of a group (a partition, a topic or all)
)

// mstep is one step of a sequence. Everything in it is decided by the
// generator, so removing steps (shrinking) leaves the others meaningful.
type mstep struct {
	kind      mstepKind
	topic     string
	cfg       TopicConfig
	batches   []mbatch
	clock     time.Duration
	random    bool   // kCrash: keep a random share of unsynced data
	seed      uint64 // kCrash: shapes the random clone
	inject    int64  // fail the inject-th mutating operation of the step (0: none)
	injectErr error
	group     string // kDeleteOffsets: the group; topic "" for all, part -1 for all
	part      int32
}

type mbatch struct {
	msgs    []mmsg
	group   string
	offsets []moffset
}

type mmsg struct {
	topic   string
	key     []byte // nil: keyless
	payload []byte // nil: tombstone
	id      ferry.ID
	retry   int // >= 0: resend earlier attempted message number retry (mod their count)
}

// moffset is a consumer offset to commit. part is taken modulo the
// topic's partitions at run time, unless bad (then it is out of range).
type moffset struct {
	topic  string
	part   int32
	offset uint64
	bad    bool
}

// crashPoint is power loss just before the k-th mutating filesystem
// operation of step.
type crashPoint struct {
	step   int
	k      int64
	random bool
}

func (c *crashPoint) String() string {
	if c == nil {
		return "none"
	}
	mode := "strict"
	if c.random {
		mode = "random"
	}
	return fmt.Sprintf("%d:%d:%s", c.step, c.k, mode)
}

func (m mmsg) String() string {
	if m.retry >= 0 {
		return fmt.Sprintf("retry#%d", m.retry)
	}
	key := "-"
	if m.key != nil {
		key = string(m.key)
	}
	val := fmt.Sprintf("%dB", len(m.payload))
	if m.payload == nil {
		val = "tomb"
	}
	return fmt.Sprintf("%s:%s/%s", m.topic, key, val)
}

func (b mbatch) String() string {
	var parts []string
	for _, m := range b.msgs {
		parts = append(parts, m.String())
	}
	s := "[" + strings.Join(parts, " ") + "]"
	if len(b.offsets) > 0 {
		var offs []string
		for _, o := range b.offsets {
			offs = append(offs, fmt.Sprintf("%s/%d=%d", o.topic, o.part, o.offset))
		}
		s += " " + b.group + "{" + strings.Join(offs, " ") + "}"
	}
	return s
}

func (s mstep) String() string {
	var b strings.Builder
	switch s.kind {
	case kOpen:
		b.WriteString("open")
	case kAppend:
		b.WriteString("append " + s.batches[0].String())
	case kAsync, kReadOnly, kCloseRace:
		b.WriteString(map[mstepKind]string{kAsync: "async", kReadOnly: "readonly-open beside", kCloseRace: "close racing"}[s.kind])
		for _, bt := range s.batches {
			b.WriteString(" " + bt.String())
		}
	case kCommit:
		b.WriteString("commit " + s.batches[0].String())
	case kOffsets:
		b.WriteString("offsets " + s.batches[0].String())
	case kCreate:
		fmt.Fprintf(&b, "create %s %s", s.topic, cfgString(s.cfg))
	case kDelete:
		b.WriteString("delete " + s.topic)
	case kClean:
		b.WriteString("clean")
	case kClock:
		fmt.Fprintf(&b, "clock %+v", s.clock)
	case kSync:
		b.WriteString("sync")
	case kReopen:
		b.WriteString("close+reopen")
	case kDropCheckpoints:
		b.WriteString("close, drop checkpoints, reopen")
	case kAlter:
		fmt.Fprintf(&b, "alter %s retention %v %dB", s.topic, s.cfg.RetentionAge, s.cfg.RetentionBytes)
	case kDeleteOffsets:
		fmt.Fprintf(&b, "delete offsets %s on %q/%d", s.group, s.topic, s.part)
	case kCrash:
		if s.random {
			fmt.Fprintf(&b, "power loss (random clone %d)+reopen", s.seed)
		} else {
			b.WriteString("power loss (strict)+reopen")
		}
	}
	if s.inject > 0 {
		fmt.Fprintf(&b, "  [inject %v at op %d]", s.injectErr, s.inject)
	}
	return b.String()
}

func cfgString(c TopicConfig) string {
	var p []string
	p = append(p, fmt.Sprintf("parts=%d", max(c.Partitions, 1)))
	if c.RetentionAge > 0 {
		p = append(p, fmt.Sprintf("age=%v", c.RetentionAge))
	}
	if c.RetentionBytes > 0 {
		p = append(p, fmt.Sprintf("bytes=%d", c.RetentionBytes))
	}
	if c.Compact {
		p = append(p, "compact")
		if c.TombstoneRetention > 0 {
			p = append(p, fmt.Sprintf("tomb=%v", c.TombstoneRetention))
		}
	}
	if c.DedupWindow != 0 {
		p = append(p, fmt.Sprintf("dedup=%v", c.DedupWindow))
	}
	return strings.Join(p, ",")
}

// ---------------------------------------------------------------------------
// Generation

// modelTopics are the topic names; each has a flavor of configuration.
var modelTopics = []string{"a", "b", "k", "r"}

type stepGen struct {
	rng    *rand.Rand
	exists map[string]bool // the generator's guess (steps may fail)
}

// genSteps returns the sequence of seed: an Open, two topic creations, and
// n-3 random steps.
func genSteps(seed uint64, n int) []mstep {
	g := &stepGen{rng: rand.New(rand.NewPCG(seed, 0x6d6f64656c)), exists: map[string]bool{}}
	steps := []mstep{{kind: kOpen}, g.create("a"), g.create("k"), g.create("b")}
	for len(steps) < n {
		s := g.step()
		if g.rng.IntN(100) < 6 && s.kind != kClock && s.kind != kCrash {
			s.inject = 1 + g.rng.Int64N(8)
			s.injectErr = vfs.EIO
			if g.rng.IntN(3) == 0 {
				s.injectErr = vfs.ENOSPC
			}
		}
		steps = append(steps, s)
	}
	return steps
}

func (g *stepGen) pick(weights ...int) int {
	total := 0
	for _, w := range weights {
		total += w
	}
	n := g.rng.IntN(total)
	for i, w := range weights {
		if n < w {
			return i
		}
		n -= w
	}
	panic("unreachable")
}

func (g *stepGen) step() mstep {
	switch g.pick(26, 12, 11, 4, 4, 1, 8, 10, 3, 5, 4, 3, 2, 2, 3, 3) {
	case 0:
		return mstep{kind: kAppend, batches: []mbatch{g.batch(false)}}
	case 1:
		return mstep{kind: kAsync, batches: g.batches(2 + g.rng.IntN(3))}
	case 2:
		return mstep{kind: kCommit, batches: []mbatch{g.batch(true)}}
	case 3:
		b := mbatch{group: g.group()}
		for i := 0; i < 1+g.rng.IntN(2); i++ {
			b.offsets = append(b.offsets, g.offset())
		}
		return mstep{kind: kOffsets, batches: []mbatch{b}}
	case 4:
		return g.create(modelTopics[g.rng.IntN(len(modelTopics))])
	case 5:
		name := modelTopics[g.rng.IntN(len(modelTopics))]
		delete(g.exists, name)
		return mstep{kind: kDelete, topic: name}
	case 6:
		return mstep{kind: kClean}
	case 7:
		var d time.Duration
		switch g.pick(70, 12, 18) {
		case 0: // the usual: time passes
			d = time.Duration(1+g.rng.IntN(600)) * time.Second
		case 1: // a big jump forward
			d = time.Duration(1+g.rng.IntN(48)) * time.Hour
		case 2: // backwards
			d = -time.Duration(1+g.rng.IntN(180)) * time.Minute
		}
		return mstep{kind: kClock, clock: d}
	case 8:
		return mstep{kind: kSync}
	case 9:
		return mstep{kind: kReopen}
	case 10:
		return mstep{kind: kCrash, random: g.rng.IntN(2) == 0, seed: g.rng.Uint64()}
	case 11:
		return mstep{kind: kReadOnly, batches: g.batches(1 + g.rng.IntN(3))}
	case 12:
		return mstep{kind: kCloseRace, batches: g.batches(2 + g.rng.IntN(4))}
	case 13:
		return mstep{kind: kDropCheckpoints}
	case 14:
		var c TopicConfig
		switch g.pick(40, 30, 30) {
		case 0:
			c.RetentionAge = time.Duration(5+g.rng.IntN(120)) * time.Minute
		case 1:
			c.RetentionBytes = int64(4<<10 + g.rng.IntN(28<<10))
		} // else: keep everything
		return mstep{kind: kAlter, topic: modelTopics[g.rng.IntN(len(modelTopics))], cfg: c}
	default:
		st := mstep{kind: kDeleteOffsets, group: g.group(), part: -1}
		if g.rng.IntN(3) > 0 {
			st.topic = g.topic()
			if g.rng.IntN(2) == 0 {
				st.part = int32(g.rng.IntN(3))
			}
		}
		return st
	}
}

// create returns a creation of name with a configuration of its flavor:
// "a" plain or with age retention, "b" with retention by age or size, "k"
// compacted, "r" any of them.
func (g *stepGen) create(name string) mstep {
	c := TopicConfig{Partitions: 1 + g.rng.IntN(3)}
	flavor := name
	if name == "r" {
		flavor = []string{"a", "b", "k"}[g.rng.IntN(3)]
	}
	switch flavor {
	case "a":
		if g.rng.IntN(2) == 0 {
			c.RetentionAge = time.Duration(10+g.rng.IntN(120)) * time.Minute
		}
	case "b":
		if g.rng.IntN(2) == 0 {
			c.RetentionAge = time.Duration(5+g.rng.IntN(115)) * time.Minute
		} else {
			c.RetentionBytes = int64(4<<10 + g.rng.IntN(28<<10))
		}
	case "k":
		c.Compact = true
		if g.rng.IntN(2) == 0 {
			c.TombstoneRetention = time.Duration(1+g.rng.IntN(60)) * time.Minute
		}
		if g.rng.IntN(4) == 0 {
			c.RetentionAge = time.Duration(30+g.rng.IntN(120)) * time.Minute
		}
	}
	switch g.pick(50, 40, 10) {
	case 1:
		c.DedupWindow = time.Duration(30+g.rng.IntN(1800)) * time.Second
	case 2:
		c.DedupWindow = -1
	}
	g.exists[name] = true
	return mstep{kind: kCreate, topic: name, cfg: c}
}

func (g *stepGen) topic() string {
	var live []string
	for _, n := range modelTopics {
		if g.exists[n] {
			live = append(live, n)
		}
	}
	if len(live) == 0 || g.rng.IntN(20) == 0 {
		return modelTopics[g.rng.IntN(len(modelTopics))] // maybe a missing one
	}
	return live[g.rng.IntN(len(live))]
}

func (g *stepGen) group() string { return "g" + strconv.Itoa(g.rng.IntN(3)) }

func (g *stepGen) offset() moffset {
	return moffset{topic: g.topic(), part: int32(g.rng.IntN(3)), offset: uint64(g.rng.IntN(60)), bad: g.rng.IntN(25) == 0}
}

func (g *stepGen) batches(n int) []mbatch {
	out := make([]mbatch, n)
	for i := range out {
		out[i] = g.batch(false)
	}
	return out
}

// batch returns 1 to 4 messages (retries of earlier IDs among them), to
// several topics when multi, with consumer offsets when multi.
func (g *stepGen) batch(multi bool) mbatch {
	var b mbatch
	n := 1 + g.rng.IntN(3)
	if multi {
		n = 2 + g.rng.IntN(3)
	}
	t := g.topic()
	for i := 0; i < n; i++ {
		if multi && g.rng.IntN(2) == 0 {
			t = g.topic()
		}
		b.msgs = append(b.msgs, g.msg(t))
	}
	if multi {
		b.group = g.group()
		for i := 0; i < 1+g.rng.IntN(2); i++ {
			b.offsets = append(b.offsets, g.offset())
		}
	}
	return b
}

func (g *stepGen) msg(topic string) mmsg {
	if g.rng.IntN(100) < 12 {
		return mmsg{retry: g.rng.IntN(1 << 20)}
	}
	m := mmsg{topic: topic, retry: -1}
	for m.id.IsZero() {
		var b [16]byte
		for i := range b {
			b[i] = byte(g.rng.UintN(256))
		}
		m.id = ferry.ID(b)
	}
	keys := 8
	if topic == "k" || topic == "r" {
		keys = 3 // compacted topics: many records per key
	}
	if g.rng.IntN(5) != 0 {
		m.key = []byte("k" + strconv.Itoa(g.rng.IntN(keys)))
	}
	if (topic == "k" || topic == "r") && g.rng.IntN(6) == 0 {
		return m // tombstone
	}
	size := g.rng.IntN(64)
	switch g.pick(35, 35, 30) {
	case 1:
		size = 64 + g.rng.IntN(900)
	case 2:
		size = 1000 + g.rng.IntN(1500)
	}
	m.payload = make([]byte, size)
	for i := range m.payload {
		m.payload[i] = 'a' + byte(g.rng.IntN(26))
	}
	return m
}

// ---------------------------------------------------------------------------
// The model

type mgk struct {
	topic string
	part  int32
}

type model struct {
	topics  map[string]*mtopic
	groups  map[string]map[mgk]uint64
	pending []*pendingOp // operations in doubt since the last reopen
}

type mtopic struct {
	cfg   TopicConfig // with defaults
	parts []*mpart
	dedup map[ferry.ID]*mdedup
}

// mpart is one partition: recs[o] is the record at offset o. Offsets are
// dense: every assigned offset holds a written record.
type mpart struct {
	recs     []*mrec
	maxStart uint64 // highest start observed: it never goes back
}

type mrec struct {
	id           ferry.ID
	key, payload []byte
	time         int64  // append time (the record's Time)
	origin       string // "acknowledged" or "adopted after a reopen"
	dupAcked     bool   // a retry was acknowledged as its duplicate
	retRemovable bool   // retention may have removed it
	cmpRemovable bool   // compaction may have removed it
	gone         bool   // observed removed: must never come back
}

func (r *mrec) removable() bool { return r.retRemovable || r.cmpRemovable }

func (r *mrec) describe() string {
	s := r.origin
	if r.dupAcked {
		s += ", later acknowledged again as the duplicate of a retry"
	}
	return s
}

// mdedup is what a topic's dedup window should say about an ID.
type mdedup struct {
	part     int32
	offset   uint64
	at       int64 // append time
	reopened bool  // a reopen happened since: the window is rebuilt, and remembers at least as long
	// forgettable: a reopen may have legitimately forgotten it (it was
	// outside the window at that reopen, or retention removed its record).
	forgettable bool
}

// pendingOp is an operation whose outcome is unknown: it failed because
// the log stopped (injected error, crash).
type pendingOp struct {
	batch    *mbatch // messages and offsets, concrete (retries resolved)
	mustNew  []bool  // per message: not a duplicate of anything the log could remember
	ctrl     *mstep  // a topic creation, deletion or alteration (cfg: the new config), or an offset deletion
	oldCfg   TopicConfig
	delKeys  []mgk // an offset deletion: the keys it deletes, and their offsets before
	delOld   []uint64
	at       int64    // clock at the attempt
	oldOffs  []uint64 // committed offsets before, per batch.offsets (with ok)
	oldHas   []bool
	describe string
}

func newModel() *model {
	return &model{topics: map[string]*mtopic{}, groups: map[string]map[mgk]uint64{}}
}

func (m *model) createTopic(name string, c TopicConfig) {
	t := &mtopic{cfg: c, parts: make([]*mpart, c.Partitions), dedup: map[ferry.ID]*mdedup{}}
	for i := range t.parts {
		t.parts[i] = &mpart{}
	}
	m.topics[name] = t
}

func (m *model) deleteTopic(name string) {
	delete(m.topics, name)
	for _, offs := range m.groups {
		for k := range offs {
			if k.topic == name {
				delete(offs, k)
			}
		}
	}
}

// rejection predicts the error Commit returns for b without writing
// anything, or nil.
func (m *model) rejection(b *Batch) error {
	for _, msg := range b.Messages {
		t := m.topics[msg.Topic]
		if t == nil {
			return ferry.ErrTopicNotFound
		}
		if t.cfg.Compact && len(msg.Key) == 0 {
			return ferry.ErrInvalidArgument // compacted topics need keys
		}
	}
	for _, o := range b.Offsets {
		t := m.topics[o.Topic]
		if t == nil {
			return ferry.ErrTopicNotFound
		}
		if o.Partition < 0 || int(o.Partition) >= len(t.parts) {
			return ferry.ErrInvalidArgument
		}
	}
	return nil
}

type dedupStatus int

const (
	dedupNew   dedupStatus = iota // the log must write it
	dedupMaybe                    // either is right
	dedupDup                      // the log must report the original
)

// lookup says what the log must do with a message of id appended now.
func (m *model) lookup(t *mtopic, id ferry.ID, now int64) (dedupStatus, *mdedup) {
	if t.cfg.DedupWindow < 0 {
		return dedupNew, nil
	}
	d := t.dedup[id]
	if d == nil {
		return dedupNew, nil
	}
	inside := d.at >= now-int64(t.cfg.DedupWindow)
	switch {
	case inside && !d.forgettable:
		return dedupDup, d
	case inside || d.reopened:
		return dedupMaybe, d
	}
	return dedupNew, d
}

func (m *model) addRecord(name string, t *mtopic, part int32, rec *mrec, at int64) uint64 {
	p := t.parts[part]
	off := uint64(len(p.recs))
	p.recs = append(p.recs, rec)
	if t.cfg.DedupWindow > 0 {
		t.dedup[rec.id] = &mdedup{part: part, offset: off, at: at}
	}
	return off
}

// markRemovable records what a Clean at now may remove: records older than
// the retention age (counted from their own append), any record of a
// partition with a size limit (the oldest go first, but which depends on
// sizes the model does not track), on compacted topics every record with
// a later one of the same key and tombstones past their retention.
func (m *model) markRemovable(now int64) {
	for _, t := range m.topics {
		c := t.cfg
		for _, p := range t.parts {
			latest := map[string]int{}
			for i, r := range p.recs {
				latest[string(r.key)] = i
			}
			for i, r := range p.recs {
				if c.RetentionBytes > 0 || (c.RetentionAge > 0 && r.time < now-int64(c.RetentionAge)) {
					r.retRemovable = true
				}
				if c.Compact && (latest[string(r.key)] != i || (r.payload == nil && r.time < now-int64(c.TombstoneRetention))) {
					r.cmpRemovable = true
				}
			}
		}
	}
}

// reopened is called after every successful Open: the dedup windows are
// rebuilt from the log, as of the clock now.
func (m *model) reopened(now int64) {
	for _, t := range m.topics {
		for _, d := range t.dedup {
			d.reopened = true
			if d.at < now-int64(t.cfg.DedupWindow) {
				d.forgettable = true
			}
			if r := t.parts[d.part].recs[d.offset]; r.gone && r.retRemovable {
				d.forgettable = true
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Runs

// violation is a broken invariant.
type violation struct {
	step   int
	kind   string // the invariant, used to tell failures apart
	detail string
}

func (v *violation) Error() string { return fmt.Sprintf("step %d: %s: %s", v.step, v.kind, v.detail) }

// where names the step of a violation (the finale comes after the last).
func (v *violation) where(steps []mstep) string {
	if v.step >= len(steps) {
		return "the finale (retry recent IDs, power loss, reopen, close, reopen)"
	}
	return fmt.Sprintf("step %d", v.step)
}

type modelRun struct {
	seed       uint64
	steps      []mstep
	crash      *crashPoint
	checkEvery bool

	rng        *rand.Rand // reads' sizes
	clock      *testClock
	fs         *vfs.FaultFS
	l          *Log
	m          *model
	attempted  []mmsg // every message ever attempted, for retries
	opsPerStep []int64
	step       int   // the step running
	injecting  bool  // the step's injected error is armed
	retiredOps int64 // mutating operations of the filesystems replaced so far
	crashAt    int64 // the crash point as a run-wide operation number (0: none)
	crashed    bool  // the crash point fired
	stopAt     int   // after the crash: last step to run
	trace      []string
	failed     *violation
	promiseMu  sync.Mutex
	promiseErr string // a promise called twice
	// soft is the first violation that does not stop the run: a record
	// removed by the cleaner back after a reopen (the removal had not been
	// made durable). It is reported if nothing worse happens.
	soft *violation
}

func newModelRun(seed uint64, steps []mstep, cp *crashPoint) *modelRun {
	var salt uint64
	if cp != nil {
		salt = uint64(cp.step)<<32 | uint64(cp.k)
	}
	return &modelRun{
		seed: seed, steps: steps, crash: cp,
		rng:        rand.New(rand.NewPCG(seed, salt)),
		clock:      newTestClock(),
		m:          newModel(),
		opsPerStep: make([]int64, len(steps)),
		stopAt:     len(steps) - 1,
	}
}

func (r *modelRun) opts() []Opt {
	o := []Opt{WithFS(r.fs), WithClock(r.clock.Now), WithCleanInterval(24 * time.Hour)}
	if r.seed%3 == 2 {
		o = append(o, WithZeroAhead(false))
	}
	return append(o, smallSegments...)
}

// newFS puts a fresh FaultFS over inner (after a power loss, the clone),
// carrying the crash point over if it has not fired yet.
func (r *modelRun) newFS(inner vfs.FS) {
	if r.fs != nil {
		r.retiredOps += r.fs.MutatingOps()
	}
	r.fs = vfs.NewFaultFS(inner)
	r.fs.TearWrites(rand.New(rand.NewPCG(r.seed, uint64(r.retiredOps))))
	if r.crashAt > 0 && !r.crashFired() {
		var rng *rand.Rand
		if r.crash.random {
			rng = rand.New(rand.NewPCG(r.seed, uint64(r.crash.k)))
		}
		r.fs.CrashAt(r.crashAt-r.retiredOps, rng)
	}
}

// totalOps counts the mutating operations of the run so far.
func (r *modelRun) totalOps() int64 { return r.retiredOps + r.fs.MutatingOps() }

// crashFired reports whether the crash point has been reached.
func (r *modelRun) crashFired() bool { return r.crashAt > 0 && r.totalOps() >= r.crashAt }

func (r *modelRun) fail(kind, format string, args ...any) *violation {
	if r.failed == nil {
		r.failed = &violation{step: r.step, kind: kind, detail: fmt.Sprintf(format, args...)}
	}
	return r.failed
}

// softFail records a violation the run goes on after.
func (r *modelRun) softFail(kind, format string, args ...any) {
	if r.soft == nil {
		r.soft = &violation{step: r.step, kind: kind, detail: fmt.Sprintf(format, args...)}
	}
}

func (r *modelRun) note(format string, args ...any) {
	r.trace = append(r.trace, fmt.Sprintf("#%d ", r.step)+fmt.Sprintf(format, args...))
}

// stepTimeout bounds one step: a step that takes longer is blocked.
const stepTimeout = 20 * time.Second

// run runs the sequence (with the crash point, if any) and returns the
// first violation.
func (r *modelRun) run() *violation {
	r.newFS(vfs.NewMemFS())
	for i := 0; i <= r.stopAt && i < len(r.steps); i++ {
		r.step = i
		st := r.steps[i]
		base := r.totalOps()
		if r.crash != nil && r.crash.step == i {
			var rng *rand.Rand
			if r.crash.random {
				rng = rand.New(rand.NewPCG(r.seed, uint64(r.crash.k)))
			}
			r.crashAt = base + r.crash.k
			r.fs.CrashAt(r.crashAt-r.retiredOps, rng)
		}
		r.injecting = st.inject > 0
		if st.inject > 0 {
			at, ierr := r.fs.MutatingOps()+st.inject, st.injectErr
			r.fs.SetInjector(func(op vfs.Op, path string, seq int64) error {
				if seq == at {
					return ierr
				}
				return nil
			})
		}
		fsBefore := r.fs
		r.note("%s", st)
		if !within(stepTimeout, func() { r.exec(st) }) {
			return r.fail("blocked", "%s did not finish in %v", st, stepTimeout)
		}
		fsBefore.SetInjector(nil)
		r.injecting = false
		if r.failed != nil {
			return r.failed
		}
		if r.crashFired() && !r.crashed {
			r.crashed = true
			r.stopAt = min(i+3, len(r.steps)-1)
		}
		if !within(stepTimeout, func() { r.recover() }) {
			return r.fail("blocked", "recovery after %s did not finish in %v", st, stepTimeout)
		}
		r.opsPerStep[i] = r.totalOps() - base
		if r.failed != nil {
			return r.failed
		}
		if r.checkEvery && r.l != nil {
			if v := r.check("after step"); v != nil {
				return v
			}
		}
	}
	r.step = len(r.steps)
	if !within(stepTimeout, r.finale) {
		return r.fail("blocked", "finale did not finish in %v", stepTimeout)
	}
	if r.failed != nil {
		return r.failed
	}
	return r.soft
}

// within runs f and reports whether it returned within d.
func within(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// recover brings the log back after a step that left it crashed (power
// loss: reopen the clone), failed (a process restart: close, reopen the
// same filesystem, whose unsynced bytes survive as in a page cache) or
// closed.
func (r *modelRun) recover() {
	for attempt := 0; attempt < 3 && r.failed == nil; attempt++ {
		switch {
		case r.fs.Crashed() != nil:
			r.closeQuietly()
			r.note("power loss: reopening the clone")
			r.newFS(r.fs.Crashed())
			r.open()
		case r.l == nil:
			r.open()
		case r.l.Healthy() != nil:
			r.note("log stopped (%v): restarting", r.l.Healthy())
			r.closeQuietly()
			r.open()
		default:
			return
		}
	}
}

func (r *modelRun) closeQuietly() {
	if r.l != nil {
		r.l.Close()
		r.l = nil
	}
}

// open opens the log, resolves what was in doubt and checks everything.
func (r *modelRun) open() {
	l, err := Open(context.Background(), testDir, r.opts()...)
	if err != nil {
		if r.fs.Crashed() != nil || r.faultFired() {
			r.note("open failed under a fault: %v", err)
			return
		}
		r.fail("reopen failed", "%v", err)
		return
	}
	r.l = l
	now := r.clock.Now().UnixNano()
	r.resolve()
	r.m.reopened(now)
	if r.failed == nil {
		r.check("after reopen")
	}
}

// faultFired reports whether the running step has an injected error armed
// (errors while it is are explained by it).
func (r *modelRun) faultFired() bool { return r.injecting }

// ---------------------------------------------------------------------------
// Executing steps

func (r *modelRun) exec(st mstep) {
	ctx := context.Background()
	if r.l == nil && st.kind != kOpen {
		r.recover()
		if r.l == nil {
			return
		}
	}
	switch st.kind {
	case kOpen:
		r.open()
	case kAppend, kCommit, kOffsets:
		b := r.materialize(st.batches[0])
		batch := r.toBatch(b)
		want := r.m.rejection(batch)
		pend := r.preparePending(b)
		var err error
		switch st.kind {
		case kAppend:
			err = r.l.Append(ctx, batch.Messages...)
			batch.Duplicates = -1 // Append does not report them
		case kCommit:
			err = r.l.Commit(ctx, batch)
		default:
			err = r.l.CommitOffsets(ctx, batch.Group, batch.Offsets...)
			batch.Duplicates = -1
		}
		r.outcome(b, batch, want, pend, err)
	case kAsync:
		r.async(st.batches)
	case kCreate:
		exists := r.m.topics[st.topic] != nil
		err := r.l.CreateTopic(ctx, st.topic, st.cfg)
		switch {
		case err == nil && !exists:
			r.m.createTopic(st.topic, st.cfg.withDefaults())
		case exists && errors.Is(err, ferry.ErrTopicExists):
		case err != nil && r.excused(err):
			r.m.pending = append(r.m.pending, &pendingOp{ctrl: &st, describe: st.String()})
		default:
			r.fail("unexpected outcome", "create %s (exists: %v): %v", st.topic, exists, err)
		}
	case kDelete:
		exists := r.m.topics[st.topic] != nil
		err := r.l.DeleteTopic(ctx, st.topic)
		switch {
		case err == nil && exists:
			r.m.deleteTopic(st.topic)
		case !exists && errors.Is(err, ferry.ErrTopicNotFound):
		case err != nil && r.excused(err):
			r.m.pending = append(r.m.pending, &pendingOp{ctrl: &st, describe: st.String()})
		default:
			r.fail("unexpected outcome", "delete %s (exists: %v): %v", st.topic, exists, err)
		}
	case kAlter:
		t := r.m.topics[st.topic]
		if t == nil {
			if err := r.l.AlterTopic(ctx, st.topic, TopicConfig{Partitions: 1}); !errors.Is(err, ferry.ErrTopicNotFound) && !(err != nil && r.excused(err)) {
				r.fail("unexpected outcome", "alter of missing topic %s: %v", st.topic, err)
			}
			break
		}
		c := t.cfg
		c.RetentionAge, c.RetentionBytes = st.cfg.RetentionAge, st.cfg.RetentionBytes
		err := r.l.AlterTopic(ctx, st.topic, c)
		switch {
		case err == nil:
			t.cfg = c
		case r.excused(err):
			alt := st
			alt.cfg = c
			r.m.pending = append(r.m.pending, &pendingOp{ctrl: &alt, oldCfg: t.cfg, describe: st.String()})
		default:
			r.fail("unexpected outcome", "alter %s to %+v: %v", st.topic, c, err)
		}
	case kDeleteOffsets:
		var parts []int32
		if st.part >= 0 {
			parts = []int32{st.part}
		}
		if st.topic != "" && r.m.topics[st.topic] == nil {
			if err := r.l.DeleteOffsets(ctx, st.group, st.topic, parts...); !errors.Is(err, ferry.ErrTopicNotFound) && !(err != nil && r.excused(err)) {
				r.fail("unexpected outcome", "delete offsets on missing topic %s: %v", st.topic, err)
			}
			break
		}
		var keys []mgk
		var old []uint64
		for k, v := range r.m.groups[st.group] {
			if (st.topic == "" || k.topic == st.topic) && (st.part < 0 || k.part == st.part) {
				keys, old = append(keys, k), append(old, v)
			}
		}
		err := r.l.DeleteOffsets(ctx, st.group, st.topic, parts...)
		switch {
		case err == nil:
			for _, k := range keys {
				delete(r.m.groups[st.group], k)
			}
		case r.excused(err):
			r.m.pending = append(r.m.pending, &pendingOp{ctrl: &st, delKeys: keys, delOld: old, describe: st.String()})
		default:
			r.fail("unexpected outcome", "%s: %v", st, err)
		}
	case kClean:
		now := r.clock.Now().UnixNano()
		r.m.markRemovable(now)
		st, err := r.l.Clean(ctx)
		if err != nil && !r.excused(err) {
			r.fail("unexpected error", "clean: %v", err)
		}
		r.note("clean: %+v %v", st, err)
		if err == nil && r.l.Healthy() == nil {
			r.checkRetentionApplied(now)
		}
	case kDropCheckpoints:
		err := r.l.Close()
		r.l = nil
		if err != nil && !r.excused(err) {
			r.fail("unexpected error", "close: %v", err)
			return
		}
		if r.fs.Crashed() != nil {
			return
		}
		// Only while no segment was deleted: without them, the checkpoint
		// is the only record of what they held.
		if segs, _ := r.fs.List(testDir + "/" + walDir); len(segs) > 0 && segs[0] == segName(0) {
			names, _ := r.fs.List(testDir + "/" + checkpointDir)
			for _, n := range names {
				r.fs.Remove(testDir + "/" + checkpointDir + "/" + n)
			}
			r.fs.SyncDir(testDir + "/" + checkpointDir)
			r.note("dropped checkpoints %v", names)
		}
		if r.fs.Crashed() == nil {
			r.open()
		}
	case kClock:
		r.clock.Advance(st.clock)
	case kSync:
		if err := r.l.Sync(ctx); err != nil && !r.excused(err) {
			r.fail("unexpected error", "sync: %v", err)
		}
	case kReopen:
		err := r.l.Close()
		r.l = nil
		if err != nil && !r.excused(err) {
			r.fail("unexpected error", "close: %v", err)
			return
		}
		if r.fs.Crashed() == nil {
			r.open()
		}
	case kCrash:
		var rng *rand.Rand
		if st.random {
			rng = rand.New(rand.NewPCG(st.seed, 1))
		}
		r.fs.Crash(rng)
		r.recover()
	case kReadOnly:
		r.readOnlyBeside(st.batches)
	case kCloseRace:
		r.closeRace(st.batches)
	}
}

// excused reports whether err is explained by a fault of this step: an
// injected error that fired, or the crash point.
func (r *modelRun) excused(err error) bool {
	if r.fs.Crashed() != nil {
		return true
	}
	st := r.steps[r.step]
	return st.inject > 0 && (errors.Is(err, st.injectErr) || errors.Is(err, ferry.ErrLogFailed))
}

// materialize resolves retries into the messages they resend and records
// new messages as attempted.
func (r *modelRun) materialize(b mbatch) mbatch {
	out := mbatch{group: b.group}
	for _, o := range b.offsets {
		if t := r.m.topics[o.topic]; t != nil {
			if o.bad {
				o.part = int32(len(t.parts))
			} else {
				o.part %= int32(len(t.parts))
			}
		}
		out.offsets = append(out.offsets, o)
	}
	for _, m := range b.msgs {
		if m.retry >= 0 {
			if len(r.attempted) == 0 {
				continue
			}
			m = r.attempted[m.retry%len(r.attempted)]
		} else {
			r.attempted = append(r.attempted, m)
		}
		out.msgs = append(out.msgs, m)
	}
	if len(out.msgs) == 0 && len(out.offsets) == 0 {
		// A batch of retries before anything was sent: send a fresh message.
		m := mmsg{topic: "a", payload: []byte("x"), retry: -1}
		m.id[0], m.id[15] = 1, byte(len(r.trace))
		m.id[1], m.id[2] = byte(r.seed), byte(r.step)
		out.msgs = append(out.msgs, m)
		r.attempted = append(r.attempted, m)
	}
	return out
}

func (r *modelRun) toBatch(b mbatch) *Batch {
	batch := &Batch{Group: b.group}
	for _, m := range b.msgs {
		fm := &ferry.Message{ID: m.id, Topic: m.topic, Key: bytes.Clone(m.key)}
		if m.payload != nil {
			fm.Payload = bytes.Clone(m.payload)
		}
		batch.Messages = append(batch.Messages, fm)
	}
	for _, o := range b.offsets {
		batch.Offsets = append(batch.Offsets, Offset{Topic: o.topic, Partition: o.part, Offset: o.offset})
	}
	return batch
}

// preparePending captures, before a call, what the model needs if the call
// fails with the log: which messages the log must write if it writes the
// batch at all, and the committed offsets before.
func (r *modelRun) preparePending(b mbatch) *pendingOp { return r.preparePendingAfter(b, nil) }

// preparePendingAfter is preparePending for a batch queued after others
// whose IDs are in seen (their messages may be what it duplicates).
func (r *modelRun) preparePendingAfter(b mbatch, seen map[ferry.ID]bool) *pendingOp {
	now := r.clock.Now().UnixNano()
	p := &pendingOp{batch: &b, at: now, describe: b.String()}
	if seen == nil {
		seen = map[ferry.ID]bool{}
	}
	for _, m := range b.msgs {
		mustNew := false
		if t := r.m.topics[m.topic]; t != nil {
			st, _ := r.m.lookup(t, m.id, now)
			mustNew = st == dedupNew && !seen[m.id]
		}
		seen[m.id] = true
		p.mustNew = append(p.mustNew, mustNew)
	}
	for _, o := range b.offsets {
		v, ok := r.m.groups[b.group][mgk{o.topic, o.part}]
		p.oldOffs, p.oldHas = append(p.oldOffs, v), append(p.oldHas, ok)
	}
	return p
}

// outcome applies the result of a Commit of b (sent as batch) to the model.
func (r *modelRun) outcome(b mbatch, batch *Batch, want error, pend *pendingOp, err error) {
	switch {
	case want != nil && errors.Is(err, want):
		return // rejected whole, as predicted
	case err == nil && want == nil:
		r.ack(b, batch)
	case err != nil && r.excused(err):
		r.m.pending = append(r.m.pending, pend)
	default:
		r.fail("unexpected outcome", "%s: got %v, want %v", b, err, want)
	}
}

// ack applies an acknowledged batch: checks the partition and offset the
// log gave each message, and what it deduplicated.
func (r *modelRun) ack(b mbatch, batch *Batch) {
	now := r.clock.Now().UnixNano()
	dups := 0
	for i, m := range batch.Messages {
		spec := b.msgs[i]
		t := r.m.topics[m.Topic]
		if m.Partition < 0 || int(m.Partition) >= len(t.parts) {
			r.fail("partition assignment", "%s: partition %d of %d", spec, m.Partition, len(t.parts))
			return
		}
		status, hit := r.m.lookup(t, m.ID, now)
		p := t.parts[m.Partition]
		implDup := m.Offset < uint64(len(p.recs))
		switch {
		case implDup && status == dedupNew:
			r.fail("dedup", "%s (ID %s) reported as a duplicate at %s/%d@%d, but it is not in the window (model entry %+v)", spec, m.ID, m.Topic, m.Partition, m.Offset, hit)
			return
		case !implDup && status == dedupDup:
			orig := t.parts[hit.part].recs[hit.offset]
			state := "present"
			switch {
			case orig.gone && orig.cmpRemovable:
				state = "removed by compaction"
			case orig.gone:
				state = "removed by the cleaner"
			}
			r.fail("dedup", "retry of %s (ID %s, in the window since %v) written again at %s/%d@%d instead of reported as the duplicate of %d@%d (the original: %s, %s)",
				spec, m.ID, time.Duration(now-hit.at), m.Topic, m.Partition, m.Offset, hit.part, hit.offset, orig.describe(), state)
			return
		case implDup && (hit.part != m.Partition || hit.offset != m.Offset):
			r.fail("dedup", "duplicate %s reported at %d@%d, the original is at %d@%d", spec, m.Partition, m.Offset, hit.part, hit.offset)
			return
		case implDup:
			dups++
			p.recs[m.Offset].dupAcked = true
			continue
		}
		if m.Key != nil && m.Partition != ferry.PartitionForKey(m.Key, len(t.parts)) {
			r.fail("partition assignment", "%s: key %q in partition %d, want %d", spec, m.Key, m.Partition, ferry.PartitionForKey(m.Key, len(t.parts)))
			return
		}
		if m.Offset != uint64(len(p.recs)) {
			r.fail("offset assignment", "%s acknowledged at %s/%d@%d, want @%d (the next offset)", spec, m.Topic, m.Partition, m.Offset, len(p.recs))
			return
		}
		if m.Time.UnixNano() != now {
			r.fail("message time", "%s: time %v, want the clock %v", spec, m.Time, time.Unix(0, now))
			return
		}
		r.m.addRecord(m.Topic, t, m.Partition, &mrec{id: m.ID, key: spec.key, payload: spec.payload, time: now, origin: "acknowledged"}, now)
	}
	if batch.Duplicates >= 0 && batch.Duplicates != dups {
		r.fail("dedup", "%s: Batch.Duplicates %d, %d messages were reported at their originals", b, batch.Duplicates, dups)
		return
	}
	for _, o := range batch.Offsets {
		offs := r.m.groups[batch.Group]
		if offs == nil {
			offs = map[mgk]uint64{}
			r.m.groups[batch.Group] = offs
		}
		offs[mgk{o.Topic, o.Partition}] = o.Offset
	}
}

// async queues every batch with AppendAsync, waits for all promises, and
// applies the outcomes in queue order.
func (r *modelRun) async(specs []mbatch) {
	type result struct {
		b     mbatch
		batch *Batch
		want  error
		pend  *pendingOp
		err   error
	}
	results := make([]*result, len(specs))
	var wg sync.WaitGroup
	for i, s := range specs {
		b := r.materialize(s)
		batch := r.toBatch(b)
		res := &result{b: b, batch: batch, want: r.m.rejection(batch), pend: r.preparePending(b)}
		results[i] = res
		if len(batch.Messages) == 0 {
			res.err = errors.New("skipped")
			continue
		}
		wg.Add(1)
		r.l.AppendAsync(context.Background(), r.promiseOnce(batch, func(got *Batch, err error) {
			res.batch.Duplicates, res.err = got.Duplicates, err
			wg.Done()
		}), batch.Messages...)
	}
	wg.Wait()
	if r.checkPromises(); r.failed != nil {
		return
	}
	seen := map[ferry.ID]bool{} // IDs of the failed batches before
	for _, res := range results {
		if res.err != nil && res.err.Error() == "skipped" {
			continue
		}
		// The model's predictions for later batches depend on earlier ones,
		// so pending state is recomputed for the ones after a failure.
		if res.err != nil && r.excused(res.err) {
			res.pend = r.preparePendingAfter(res.b, seen)
		}
		r.outcome(res.b, res.batch, res.want, res.pend, res.err)
		if r.failed != nil {
			return
		}
	}
}

// closeRace appends from several goroutines while Close runs. Appends that
// return nil are acknowledged, ErrClosed ones were not written; none may
// block.
func (r *modelRun) closeRace(specs []mbatch) {
	type result struct {
		b     mbatch
		batch *Batch
		err   error
		done  chan struct{}
	}
	var results []*result
	l := r.l
	start := make(chan struct{})
	var mu sync.Mutex
	var wg sync.WaitGroup
	for g, s := range specs {
		b := r.materialize(s)
		var msgs []mmsg
		for _, m := range b.msgs {
			t := r.m.topics[m.topic]
			if t != nil && !r.isKnownID(m) && (!t.cfg.Compact || len(m.key) > 0) {
				msgs = append(msgs, m)
			}
		}
		if len(msgs) == 0 {
			continue
		}
		// Each appender sends its messages, then fresh copies of them, until
		// an append fails: one message per append, fresh IDs only, so that
		// their order is the race's.
		g, async := g, g%2 == 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for n := 0; n < 40; n++ {
				m := msgs[n%len(msgs)]
				if n >= len(msgs) {
					m.id[0], m.id[1], m.id[2] = 0xc1, byte(g), byte(n)
					m.id[3] = byte(r.step)
				}
				one := mbatch{msgs: []mmsg{m}}
				res := &result{b: one, batch: r.toBatch(one), done: make(chan struct{})}
				mu.Lock()
				results = append(results, res)
				mu.Unlock()
				if async {
					l.AppendAsync(context.Background(), r.promiseOnce(res.batch, func(_ *Batch, err error) {
						res.err = err
						close(res.done)
					}), res.batch.Messages...)
				} else {
					res.err = l.Append(context.Background(), res.batch.Messages...)
					close(res.done)
				}
				select {
				case <-res.done:
				case <-time.After(5 * time.Second):
					return // reported below
				}
				if res.err != nil {
					return
				}
			}
		}()
	}
	close(start)
	runtime.Gosched()
	closeErr := l.Close()
	// Once Close has returned, every append must return promptly.
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(2 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		for _, res := range results {
			select {
			case <-res.done:
				continue
			default:
			}
			r.fail("blocked", "an append racing Close never returned (%s); Close returned %v", res.b, closeErr)
			return
		}
		r.fail("blocked", "an appender racing Close never returned; Close returned %v", closeErr)
		return
	}
	r.l = nil
	deadline := time.After(time.Second)
	for _, res := range results {
		select {
		case <-res.done:
		case <-deadline:
			r.fail("blocked", "an append racing Close never returned (%s); Close returned %v", res.b, closeErr)
			return
		}
	}
	if r.checkPromises(); r.failed != nil {
		return
	}
	if closeErr != nil && !r.excused(closeErr) {
		r.fail("unexpected error", "close racing appends: %v", closeErr)
		return
	}
	// Apply the acknowledged ones in offset order (per partition that is
	// the order the writer took them).
	var acked []*result
	for _, res := range results {
		switch {
		case res.err == nil:
			acked = append(acked, res)
		case errors.Is(res.err, ferry.ErrClosed):
		case r.excused(res.err):
			r.m.pending = append(r.m.pending, r.preparePending(res.b))
		default:
			r.fail("unexpected error", "append racing Close: %v", res.err)
			return
		}
	}
	sort.SliceStable(acked, func(i, j int) bool { return acked[i].batch.Messages[0].Offset < acked[j].batch.Messages[0].Offset })
	for _, res := range acked {
		res.batch.Duplicates = -1
		r.ack(res.b, res.batch)
		if r.failed != nil {
			return
		}
	}
	if r.fs.Crashed() == nil {
		r.open()
	}
}

// checkRetentionApplied checks, after a Clean at now, that a partition of a
// topic with a retention age whose records are all older than it was
// emptied. (Which records of a partly expired partition go depends on how
// the index groups them, which the model does not follow.)
func (r *modelRun) checkRetentionApplied(now int64) {
	for _, name := range sortedTopics(r.m) {
		t := r.m.topics[name]
		if t.cfg.RetentionAge <= 0 {
			continue
		}
		cutoff := now - int64(t.cfg.RetentionAge)
		for pi, p := range t.parts {
			newest := int64(-1 << 63)
			for _, rec := range p.recs {
				newest = max(newest, rec.time)
			}
			if len(p.recs) == 0 || newest >= cutoff {
				continue
			}
			if start, end, _ := r.l.Bounds(name, int32(pi)); start != end {
				r.fail("retention not applied", "%s/%d: every record was appended before %v (the newest %v ago, retention %v), yet Clean kept [%d, %d)",
					name, pi, time.Unix(0, cutoff).UTC(), time.Duration(now-newest), t.cfg.RetentionAge, start, end)
				return
			}
		}
	}
}

// promiseOnce wraps an AppendAsync promise: it passes on the first call
// only, and remembers a second one (a promise is called exactly once).
func (r *modelRun) promiseOnce(b *Batch, f func(*Batch, error)) func(*Batch, error) {
	var calls int
	var mu sync.Mutex
	return func(got *Batch, err error) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		if n == 1 {
			f(got, err)
			return
		}
		r.promiseMu.Lock()
		if r.promiseErr == "" {
			r.promiseErr = fmt.Sprintf("the promise of AppendAsync %s was called %d times (the last with %v)", messagesString(b.Messages), n, err)
		}
		r.promiseMu.Unlock()
	}
}

// checkPromises reports a promise called more than once.
func (r *modelRun) checkPromises() {
	r.promiseMu.Lock()
	defer r.promiseMu.Unlock()
	if r.promiseErr != "" {
		r.fail("promise called twice", "%s", r.promiseErr)
	}
}

func messagesString(msgs []*ferry.Message) string {
	var parts []string
	for _, m := range msgs {
		parts = append(parts, fmt.Sprintf("%s:%s/%dB", m.Topic, m.Key, len(m.Payload)))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// isKnownID reports whether the message's ID is in its topic's model
// dedup state (a retry): races take only fresh messages.
func (r *modelRun) isKnownID(m mmsg) bool {
	t := r.m.topics[m.topic]
	return t != nil && t.dedup[m.id] != nil
}

// readOnlyBeside opens the log read-only and reads it all while the writer
// appends the batches, and checks what the read-only log saw.
func (r *modelRun) readOnlyBeside(specs []mbatch) {
	type roView struct {
		msgs map[mgk][]*ferry.Message
		hw   map[mgk]uint64
	}
	before := r.ends()
	var views []roView
	var roErr error
	writerDone := make(chan struct{})
	done := make(chan struct{})
	// Open read-only again and again while the writer appends and cleans
	// (rolls, checkpoints and segment deletions happen under it).
	readOnce := func() error {
		ro, err := Open(context.Background(), testDir, append(r.opts(), WithReadOnly())...)
		if err != nil {
			return err
		}
		defer ro.Close()
		v := roView{msgs: map[mgk][]*ferry.Message{}, hw: map[mgk]uint64{}}
		for _, ti := range ro.Topics() {
			for p := range ti.Partitions {
				k := mgk{ti.Name, int32(p)}
				start, end, _ := ro.Bounds(ti.Name, int32(p))
				v.hw[k] = end
				for off := start; off < end; {
					rr, err := ro.Read(ti.Name, int32(p), off, ReadOpts{MaxMessages: 7})
					if err != nil {
						return fmt.Errorf("read %s/%d@%d: %w", ti.Name, p, off, err)
					}
					v.msgs[k] = append(v.msgs[k], rr.Messages...)
					if len(rr.Messages) == 0 || rr.Next <= off {
						break
					}
					off = rr.Next
				}
			}
		}
		views = append(views, v)
		return nil
	}
	go func() {
		defer close(done)
		for i := 0; i < 20; i++ {
			err := readOnce()
			if err != nil && (roErr == nil || errors.Is(err, ferry.ErrCorrupt)) {
				roErr = err
			}
			select {
			case <-writerDone:
				if i > 0 {
					return
				}
			default:
			}
		}
	}()
	r.async(specs)
	if r.failed == nil && r.l.Healthy() == nil {
		r.m.markRemovable(r.clock.Now().UnixNano())
		if _, err := r.l.Clean(context.Background()); err != nil && !r.excused(err) {
			r.fail("unexpected error", "clean beside a read-only open: %v", err)
		}
	}
	close(writerDone)
	<-done
	if roErr != nil {
		if errors.Is(roErr, ferry.ErrCorrupt) {
			r.fail("read-only open reported corruption", "beside the writer: %v", roErr)
			return
		}
		r.note("read-only open: %v", roErr)
	}
	if r.failed != nil {
		return
	}
	for _, v := range views {
		if r.checkReadOnlyView(before, v.msgs, v.hw); r.failed != nil {
			return
		}
	}
}

// checkReadOnlyView checks what a read-only log saw: acknowledged (or
// in-doubt) records, once each, in order, up to an end between the
// writer's ends before and after.
func (r *modelRun) checkReadOnlyView(before map[mgk]uint64, view map[mgk][]*ferry.Message, hws map[mgk]uint64) {
	inDoubt := map[ferry.ID]mmsg{}
	for _, p := range r.m.pending {
		if p.batch != nil {
			for _, m := range p.batch.msgs {
				inDoubt[m.id] = m
			}
		}
	}
	for k, msgs := range view {
		t := r.m.topics[k.topic]
		if t == nil {
			continue // deleted since, or created by an in-doubt step
		}
		p := t.parts[k.part]
		doubtful := uint64(0)
		prev := int64(-1)
		for _, m := range msgs {
			if int64(m.Offset) <= prev {
				r.fail("read-only open", "%s/%d: offset %d after %d", k.topic, k.part, m.Offset, prev)
				return
			}
			prev = int64(m.Offset)
			if m.Offset >= uint64(len(p.recs)) {
				// Written by an append that then failed: another process
				// may see those bytes (they are in the page cache).
				if d, ok := inDoubt[m.ID]; ok && d.topic == k.topic && bytes.Equal(d.payload, m.Payload) {
					doubtful++
					continue
				}
			}
			if m.Offset >= uint64(len(p.recs)) || !sameRecord(p.recs[m.Offset], m) {
				r.fail("read-only open", "%s/%d@%d: read %s, which the writer did not write there", k.topic, k.part, m.Offset, m.ID)
				return
			}
		}
		if hw := hws[k]; hw < before[k] || hw > uint64(len(p.recs))+doubtful {
			r.fail("read-only open", "%s/%d: end %d, the writer's end went from %d to %d", k.topic, k.part, hw, before[k], len(p.recs))
			return
		}
	}
}

func (r *modelRun) ends() map[mgk]uint64 {
	out := map[mgk]uint64{}
	for name, t := range r.m.topics {
		for i, p := range t.parts {
			out[mgk{name, int32(i)}] = uint64(len(p.recs))
		}
	}
	return out
}

func sameRecord(rec *mrec, m *ferry.Message) bool {
	return rec.id == m.ID && bytes.Equal(rec.key, m.Key) && bytes.Equal(rec.payload, m.Payload) &&
		(rec.payload == nil) == (m.Payload == nil) && rec.time == m.Time.UnixNano()
}

// finale ends every run: retry the recent messages (the dedup window must
// hold across the reopens so far), lose power at once (strict: only what
// was synced survives), reopen and check, then Close, reopen, check.
func (r *modelRun) finale() {
	if r.failed != nil {
		return
	}
	r.recover()
	if r.l == nil || r.failed != nil {
		return
	}
	var retries []mmsg
	n := len(r.attempted)
	for i := max(0, n-6); i < n; i++ {
		retries = append(retries, r.attempted[i])
	}
	for i := 0; i < 3 && n > 0; i++ {
		retries = append(retries, r.attempted[r.rng.IntN(n)])
	}
	for _, m := range retries {
		b := mbatch{msgs: []mmsg{m}}
		batch := r.toBatch(b)
		want := r.m.rejection(batch)
		pend := r.preparePending(b)
		err := r.l.Commit(context.Background(), batch)
		r.outcome(b, batch, want, pend, err)
		if r.failed != nil {
			return
		}
	}
	r.note("finale: power loss (strict)")
	r.fs.Crash(nil)
	r.recover()
	if r.l == nil || r.failed != nil {
		return
	}
	if err := r.l.Close(); err != nil {
		r.fail("unexpected error", "close: %v", err)
		return
	}
	r.l = nil
	r.open()
	if r.l != nil {
		r.l.Close()
		r.l = nil
	}
}

// ---------------------------------------------------------------------------
// Resolving what was in doubt

// resolve looks, after a reopen, at what became of the operations in
// doubt: a topic creation or deletion either happened or not; a batch's
// messages are all there (at the offsets after the acknowledged ones) or
// none, and its offsets with them. What is there is adopted by the model.
func (r *modelRun) resolve() {
	pend := r.m.pending
	r.m.pending = nil
	l := r.l
	for _, p := range pend {
		if p.ctrl == nil {
			continue
		}
		info, err := l.Topic(p.ctrl.topic)
		have := r.m.topics[p.ctrl.topic] != nil
		switch {
		case p.ctrl.kind == kCreate && !have && err == nil:
			if info.Config != p.ctrl.cfg.withDefaults() {
				r.fail("topic config", "in-doubt creation of %s recovered with config %+v, want %+v", p.ctrl.topic, info.Config, p.ctrl.cfg.withDefaults())
				return
			}
			r.m.createTopic(p.ctrl.topic, info.Config)
			r.note("adopted in-doubt %s", p.describe)
		case p.ctrl.kind == kDelete && have && err != nil:
			r.m.deleteTopic(p.ctrl.topic)
			r.note("adopted in-doubt %s", p.describe)
		case p.ctrl.kind == kAlter && have && err == nil && info.Config == p.ctrl.cfg && info.Config != p.oldCfg:
			r.m.topics[p.ctrl.topic].cfg = info.Config
			r.note("adopted in-doubt %s", p.describe)
		case p.ctrl.kind == kAlter && have && err == nil && info.Config != p.oldCfg:
			r.fail("topic config", "in-doubt alteration of %s recovered with config %+v: neither the old %+v nor the new %+v", p.ctrl.topic, info.Config, p.oldCfg, p.ctrl.cfg)
			return
		case p.ctrl.kind == kDeleteOffsets:
			gone, kept := 0, 0
			for i, k := range p.delKeys {
				v, ok := l.CommittedOffset(p.ctrl.group, k.topic, k.part)
				switch {
				case !ok:
					gone++
				case v == p.delOld[i]:
					kept++
				}
			}
			if gone != len(p.delKeys) && kept != len(p.delKeys) {
				r.fail("committed offset", "in-doubt %s recovered with %d of its %d offsets deleted and %d kept: all or none", p.describe, gone, len(p.delKeys), kept)
				return
			}
			if gone == len(p.delKeys) && gone > 0 {
				for _, k := range p.delKeys {
					delete(r.m.groups[p.ctrl.group], k)
				}
				r.note("adopted in-doubt %s", p.describe)
			}
		}
	}
	// Every record past the model's end must belong to a pending batch.
	type where struct {
		op  *pendingOp
		idx int
	}
	byID := map[ferry.ID][]where{}
	for _, p := range pend {
		if p.batch == nil {
			continue
		}
		for i, m := range p.batch.msgs {
			byID[m.id] = append(byID[m.id], where{p, i})
		}
	}
	adopted := map[*pendingOp]int{}
	names := sortedTopics(r.m)
	for _, name := range names {
		t := r.m.topics[name]
		for pi, p := range t.parts {
			_, end, err := l.Bounds(name, int32(pi))
			if err != nil {
				r.fail("bounds", "%s/%d: %v", name, pi, err)
				return
			}
			for off := uint64(len(p.recs)); off < end; {
				res, err := l.Read(name, int32(pi), off, ReadOpts{MaxMessages: 16})
				if err != nil {
					r.fail("read error", "%s/%d@%d (past the acknowledged end %d): %v", name, pi, off, len(p.recs), err)
					return
				}
				if len(res.Messages) == 0 {
					break // a gap: the check reports the high watermark
				}
				for _, m := range res.Messages {
					if m.Offset != uint64(len(p.recs)) {
						r.fail("high watermark", "%s/%d: after the acknowledged end %d, the next record read is at %d", name, pi, len(p.recs), m.Offset)
						return
					}
					var w *where
					for i := range byID[m.ID] {
						c := byID[m.ID][i]
						if c.op.batch.msgs[c.idx].topic == name {
							w = &c
							break
						}
					}
					if w == nil {
						r.fail("phantom record", "%s/%d@%d: %s was never written (acknowledged end %d)", name, pi, m.Offset, m.ID, len(p.recs))
						return
					}
					spec := w.op.batch.msgs[w.idx]
					if !bytes.Equal(spec.key, m.Key) || !bytes.Equal(spec.payload, m.Payload) || (spec.payload == nil) != (m.Payload == nil) {
						r.fail("phantom record", "%s/%d@%d: %s holds other bytes than were written", name, pi, m.Offset, m.ID)
						return
					}
					if t.cfg.DedupWindow > 0 {
						if d := t.dedup[m.ID]; d != nil && !d.forgettable && w.op.at-int64(t.cfg.DedupWindow) <= d.at {
							r.fail("dedup", "%s/%d@%d: %s written again, the original at %d@%d was in the window", name, pi, m.Offset, m.ID, d.part, d.offset)
							return
						}
					}
					r.m.addRecord(name, t, int32(pi), &mrec{id: m.ID, key: spec.key, payload: spec.payload, time: m.Time.UnixNano(), origin: "adopted after a reopen: an in-doubt append the reopened log served"}, w.op.at)
					adopted[w.op]++
				}
				off = res.Next
			}
		}
	}
	// Atomicity: a batch is there whole or not at all, offsets included.
	for _, p := range pend {
		if p.batch == nil {
			continue
		}
		must := 0
		for _, n := range p.mustNew {
			if n {
				must++
			}
		}
		got := adopted[p]
		if got > 0 && got < must {
			r.fail("torn batch", "in-doubt batch %s: %d of its %d new messages are in the log", p.describe, got, must)
			return
		}
		// The batch's value of each offset is its last one, the old one
		// is the value before the first.
		type change struct {
			old, new uint64
			had      bool
		}
		changes := map[mgk]*change{}
		var keys []mgk
		for i, o := range p.batch.offsets {
			k := mgk{o.topic, o.part}
			if c := changes[k]; c != nil {
				c.new = o.offset
				continue
			}
			changes[k] = &change{old: p.oldOffs[i], had: p.oldHas[i], new: o.offset}
			keys = append(keys, k)
		}
		for _, k := range keys {
			c := changes[k]
			if r.m.topics[k.topic] == nil {
				continue
			}
			v, ok := l.CommittedOffset(p.batch.group, k.topic, k.part)
			isNew := ok && v == c.new
			isOld := ok == c.had && (!c.had || v == c.old)
			switch {
			case got > 0 && !isNew:
				r.fail("torn batch", "in-doubt batch %s: its messages are in the log, its offset %s/%d is %d (%v)", p.describe, k.topic, k.part, v, ok)
				return
			case got == 0 && must > 0 && !isOld:
				r.fail("torn batch", "in-doubt batch %s: its messages are not in the log, its offset %s/%d is %d", p.describe, k.topic, k.part, v)
				return
			case !isNew && !isOld:
				r.fail("committed offset", "in-doubt batch %s: offset %s/%d is %d (%v), neither the old %d (%v) nor the new %d", p.describe, k.topic, k.part, v, ok, c.old, c.had, c.new)
				return
			}
			if isNew {
				offs := r.m.groups[p.batch.group]
				if offs == nil {
					offs = map[mgk]uint64{}
					r.m.groups[p.batch.group] = offs
				}
				offs[k] = v
			}
		}
		if got > 0 {
			r.note("adopted in-doubt %s", p.describe)
		}
	}
}

func sortedTopics(m *model) []string {
	names := make([]string, 0, len(m.topics))
	for n := range m.topics {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ---------------------------------------------------------------------------
// Checking

// check compares the whole log with the model.
func (r *modelRun) check(when string) *violation {
	l := r.l
	infos := l.Topics()
	var got []string
	for _, ti := range infos {
		got = append(got, ti.Name)
		if t := r.m.topics[ti.Name]; t != nil && t.cfg != ti.Config {
			return r.fail("topic config", "%s %s: %+v, want %+v", when, ti.Name, ti.Config, t.cfg)
		}
	}
	if want := sortedTopics(r.m); strings.Join(got, ",") != strings.Join(want, ",") {
		return r.fail("topics", "%s: topics %v, want %v", when, got, want)
	}
	for _, name := range sortedTopics(r.m) {
		t := r.m.topics[name]
		for pi := range t.parts {
			if v := r.checkPartition(when, name, t, int32(pi)); v != nil {
				return v
			}
		}
	}
	return r.checkGroups(when)
}

func (r *modelRun) checkGroups(when string) *violation {
	got := r.l.Groups()
	want := map[string][]Offset{}
	for g, offs := range r.m.groups {
		for k, v := range offs {
			want[g] = append(want[g], Offset{Topic: k.topic, Partition: k.part, Offset: v})
		}
		sort.Slice(want[g], func(i, j int) bool {
			a, b := want[g][i], want[g][j]
			return a.Topic < b.Topic || a.Topic == b.Topic && a.Partition < b.Partition
		})
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return r.fail("committed offset", "%s: groups %v, want the last acknowledged %v", when, got, want)
	}
	return nil
}

func (r *modelRun) checkPartition(when, name string, t *mtopic, part int32) *violation {
	l := r.l
	p := t.parts[part]
	want := uint64(len(p.recs))
	start, end, err := l.Bounds(name, part)
	if err != nil {
		return r.fail("bounds", "%s %s/%d: %v", when, name, part, err)
	}
	if end != want {
		return r.fail("high watermark", "%s %s/%d: end %d, want %d (last acknowledged offset + 1)", when, name, part, end, want)
	}
	reopened := when == "after reopen"
	if start < p.maxStart {
		if !reopened {
			return r.fail("start went backwards", "%s %s/%d: start %d, was already %d", when, name, part, start, p.maxStart)
		}
		r.softFail("removed record came back after a reopen", "%s/%d: start %d, was %d before the reopen", name, part, start, p.maxStart)
		p.maxStart = start
	}
	if start > end {
		return r.fail("bounds", "%s %s/%d: start %d past end %d", when, name, part, start, end)
	}
	present := make([]bool, want)
	var times []int64 // of present records, by offset
	var offs []uint64
	prev := int64(-1)
	for off := start; off < end; {
		res, err := l.Read(name, part, off, ReadOpts{MaxMessages: 1 + r.rng.IntN(40), MaxBytes: 1 + r.rng.IntN(8<<10)})
		if err != nil {
			return r.fail("read error", "%s %s/%d@%d: %v", when, name, part, off, err)
		}
		if res.HighWatermark != end {
			return r.fail("high watermark", "%s %s/%d: Read's high watermark %d, Bounds' end %d", when, name, part, res.HighWatermark, end)
		}
		for _, m := range res.Messages {
			switch {
			case int64(m.Offset) <= prev:
				return r.fail("read not monotonic", "%s %s/%d: read offset %d after %d (reading from %d)", when, name, part, m.Offset, prev, off)
			case m.Offset < off || m.Offset < start || m.Offset >= end:
				return r.fail("read outside bounds", "%s %s/%d: read offset %d reading from %d, bounds [%d, %d)", when, name, part, m.Offset, off, start, end)
			case m.Partition != part || m.Topic != name:
				return r.fail("read", "%s %s/%d: message says %s/%d", when, name, part, m.Topic, m.Partition)
			}
			rec := p.recs[m.Offset]
			if !sameRecord(rec, m) {
				return r.fail("wrong record", "%s %s/%d@%d: read %s %q/%dB@%v, want %s %q/%dB@%v", when, name, part, m.Offset,
					m.ID, m.Key, len(m.Payload), m.Time.UnixNano(), rec.id, rec.key, len(rec.payload), rec.time)
			}
			if rec.gone {
				if !reopened {
					return r.fail("removed record came back", "%s %s/%d@%d: %s was removed by the cleaner and is back", when, name, part, m.Offset, m.ID)
				}
				r.softFail("removed record came back after a reopen", "%s/%d@%d: %s was removed by the cleaner before the reopen", name, part, m.Offset, m.ID)
				rec.gone = false
			}
			present[m.Offset] = true
			times, offs = append(times, m.Time.UnixNano()), append(offs, m.Offset)
			prev = int64(m.Offset)
		}
		if len(res.Messages) == 0 && res.Next <= off {
			break
		}
		// Next may skip offsets the cleaner emptied; it must not skip a
		// record.
		if from := uint64(prev + 1); res.Next > from && from >= off {
			probe, err := l.Read(name, part, from, ReadOpts{MaxMessages: 1})
			if err != nil {
				return r.fail("read error", "%s %s/%d@%d: %v", when, name, part, from, err)
			}
			if len(probe.Messages) > 0 && probe.Messages[0].Offset < res.Next {
				return r.fail("read skipped a record", "%s %s/%d: Read from %d said Next %d, but offset %d holds a record", when, name, part, off, res.Next, probe.Messages[0].Offset)
			}
		}
		off = res.Next
	}
	for o := uint64(0); o < want; o++ {
		rec := p.recs[o]
		if present[o] {
			continue
		}
		if !rec.removable() {
			where := "missing"
			if o < start {
				where = fmt.Sprintf("below the start %d", start)
			}
			return r.fail("acknowledged record lost", "%s %s/%d@%d: %s (%s) is %s, and the cleaner may not remove it", when, name, part, o, rec.id, rec.describe(), where)
		}
		if !rec.gone {
			rec.gone = true
			if d := t.dedup[rec.id]; d != nil && d.part == part && d.offset == o && rec.retRemovable {
				d.forgettable = true
			}
		}
	}
	p.maxStart = max(p.maxStart, start)
	// Fetch at the end sees nothing (no phantom offsets past it).
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if res, _ := l.Fetch(ctx, name, part, end, ReadOpts{}); len(res.Messages) > 0 {
		return r.fail("phantom record", "%s %s/%d: Fetch at the end %d returned offset %d", when, name, part, end, res.Messages[0].Offset)
	}
	// OffsetForTime: the first record at or after the time, or a hole just
	// before it.
	if len(times) > 0 {
		probe := []int64{times[r.rng.IntN(len(times))], times[r.rng.IntN(len(times))] + 1, times[0] - 1}
		for _, ts := range probe {
			wantOff := end
			for i, tm := range times {
				if tm >= ts {
					wantOff = offs[i]
					break
				}
			}
			got, err := l.OffsetForTime(name, part, time.Unix(0, ts))
			if err != nil {
				return r.fail("offset for time", "%s %s/%d: %v", when, name, part, err)
			}
			early := false
			for _, o := range offs {
				if o >= got && o < wantOff {
					early = true
				}
			}
			if got > wantOff || early {
				return r.fail("offset for time", "%s %s/%d: OffsetForTime(%d) = %d, the first record at or after it is at %d", when, name, part, ts, got, wantOff)
			}
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Shrinking and reporting

// shrinkFailure removes steps (chunks, then single ones) while the run
// still fails with the same kind of violation, within a time budget.
func shrinkFailure(seed uint64, steps []mstep, cp *crashPoint, v *violation) ([]mstep, *crashPoint, *violation) {
	deadline := time.Now().Add(8 * time.Second)
	fails := func(s []mstep, c *crashPoint) *violation {
		r := newModelRun(seed, s, c)
		r.checkEvery = true
		if got := r.run(); got != nil && got.kind == v.kind {
			return got
		}
		return nil
	}
	// Steps after the failing one (and the crash's epilogue) do not matter.
	if end := v.step + 1; end < len(steps) && (cp == nil || cp.step < end) {
		if got := fails(steps[:end], cp); got != nil {
			steps, v = steps[:end], got
		}
	}
	for chunk := len(steps) / 2; chunk >= 1 && time.Now().Before(deadline); chunk /= 2 {
		for i := 1; i+chunk <= len(steps) && time.Now().Before(deadline); {
			if cp != nil && cp.step >= i && cp.step < i+chunk {
				i += chunk
				continue
			}
			cand := append(append([]mstep(nil), steps[:i]...), steps[i+chunk:]...)
			var cc *crashPoint
			if cp != nil {
				c := *cp
				if c.step >= i+chunk {
					c.step -= chunk
				}
				cc = &c
			}
			if got := fails(cand, cc); got != nil {
				steps, cp, v = cand, cc, got
				continue
			}
			i += chunk
		}
	}
	return steps, cp, v
}

func formatFailure(seed uint64, steps []mstep, cp *crashPoint, v *violation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "model violation: %s\n  seed %d, crash point %s (rerun: FERRY_MODEL_SEED=%d", v.kind, seed, cp, seed)
	if cp != nil {
		fmt.Fprintf(&b, " FERRY_MODEL_POINT=%s", cp)
	}
	fmt.Fprintf(&b, "; the steps below are shrunk from the seed's)\n  at %s: %s\n  steps:\n", v.where(steps), v.detail)
	for i, s := range steps {
		mark := "  "
		if cp != nil && cp.step == i {
			mark = fmt.Sprintf("  [power loss at its mutating op %d, %s clone]", cp.k, map[bool]string{false: "strict", true: "random"}[cp.random])
		}
		fmt.Fprintf(&b, "    %2d %s%s\n", i, s, mark)
	}
	return b.String()
}
