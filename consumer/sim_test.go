// TestSimulation is a seeded simulation of the processing runtime with an
// oracle. Each seed generates a scenario (math/rand/v2 PCG): one group "g"
// consuming topic "in" (2-4 partitions, 3-12 keys, DLQ "g.dlq"), and a list
// of steps: publish batches, start / stop / kill / crash members, operator
// redrives (by key, by class, all) and purges (one entry, a key), fixes and
// breaks of handler behaviour, and waits. Inputs are identified by the
// payload "k<key>/<seq>" (seq counts per key in publication order), never
// by message ID: a redriven message may be a copy (new ID, header
// dlq.HeaderRedriveOf) or the original itself. Operator actions are only
// requests; the harness never assumes they take effect synchronously and
// only waits for quiescence at the end.
//
// Per input, the scenario picks a behaviour: ok, poison (ferry.Permanent
// until its key is fixed), transient (fails k times, then succeeds), panic
// (once), slow (a few ms, honouring its context), retry-after (asks once
// for a delay over the durable-retry threshold, so the retry is scheduled
// through the DLQ when the seed enables WithDurableRetry).
//
// Members: "stop" cancels Run's context and waits for Run to return; "kill"
// cancels it without waiting and starts a new member at once; "crash"
// freezes the member (its backend calls fail, its heartbeats stop being
// sent, its handler does nothing more) and starts a new member at once; the
// frozen member's session expires after the backend's session timeout.
// An invocation in flight when its member crashes counts as running until
// the crash only (a real crash ends it there).
//
// After the steps, the final drain fixes every poison input, starts a
// member if none runs, and redrives all dead entries repeatedly until the
// DLQ lists nothing dead and every input not purged was handled (20 s of
// bubble time at most; it gives up after 2 s without a newly handled
// input), then stops every member.
//
// Checked, over every handler invocation and observer event:
//  1. lost: every input is handled (EventHandled) or purged by an operator
//     step (purges are by the IDs List returned, so the purged seqs are
//     known exactly);
//  2. order: per key, the first successful handlings are in seq order,
//     purged seqs ignored;
//  3. overlap: no two invocations of one key run at once, on any members
//     (an invocation runs until its handler returns);
//  4. exactly-once (a third of the seeds, WithExactlyOnce with a store per
//     member; every invocation emits one output with a fresh ID, so the
//     log's deduplication cannot hide a second effect): "out" holds exactly
//     one output per handled input and none for the others;
//  5. DLQ accounting: at the end nothing is dead in the DLQ and handled ∪
//     purged is every published input;
//  6. lease: a member whose heartbeats were paused ("pause": they stop
//     reaching the group for twice the session timeout while its handlers
//     and backend calls go on; a new member starts at once) starts no
//     invocation after its lease ended (the last heartbeat the group took
//     plus the session timeout). An invocation it started in time and that
//     ran on past the lease is left out of the overlap check: nothing can
//     stop a handler already running;
//
// and quiescence: the drain ends (a key that stays parked for good shows
// as "quiescence" plus "lost"). "Handled" means an EventHandled, an
// exactly-once skip of an input already marked included. An order
// violation names where the earlier seq was when the later one was
// handled; the key histories include the operator's and the drain's
// redrives and purges (kinds op-redrive, op-purge, drain-redrive: entries
// dead before the step and not after it).
//
// A failure prints the seed, the configuration, the steps (with what they
// did at run time) and each violated invariant with the invocations and
// events of the keys involved.
//
// It runs inside testing/synctest bubbles: the commit log over MemFS, the
// embedded backend and the consumers all block durably, so time is
// virtual (waits cost nothing) and a seed takes a fraction of a second.
// The scenario is determined by the seed; goroutine scheduling is not, so a
// failing seed may need a few runs (-count) to fail again.
//
// Knobs (environment):
//
//	FERRY_SIM_SEEDS=n   how many seeds to run, 1..n (default 500; 30 with -short)
//	FERRY_SIM_SEED=s    run only seed s
//	FERRY_SIM_STEPS=n   steps per scenario (default 60)
//	FERRY_SIM_LOG=1     log the scenario of passing seeds too
//	FERRY_SIM_MUTATE=m  self-test of the checker: falsify the recorded history
//	                    once per seed, so the named invariant must fail:
//	                    order (a fake early success of a key's last seq),
//	                    overlap (a fake invocation beside a real one), lost
//	                    (one success left unrecorded), dup (a second output
//	                    for one input, exactly-once seeds only)
//	FERRY_SIM_STATIC=1  one member from the start, never stopped, killed or
//	                    crashed (separates rebalance defects from the rest)
package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ferrymq/ferry"
	"github.com/ferrymq/ferry/backend"
	"github.com/ferrymq/ferry/backend/embedded"
	"github.com/ferrymq/ferry/commitlog"
	"github.com/ferrymq/ferry/consumer"
	"github.com/ferrymq/ferry/dlq"
	"github.com/ferrymq/ferry/idempotency"
	"github.com/ferrymq/ferry/retry"
	"github.com/ferrymq/ferry/vfs"
)

const (
	simGroup      = "g"
	simTopic      = "in"
	simDLQ        = "g.dlq"
	simOut        = "out"
	simStore      = "g.processed"
	simDurable    = 50 * time.Millisecond // WithDurableRetry threshold
	simSession    = 60 * time.Millisecond // embedded session timeout
	simDrainLimit = 20 * time.Second
	simDrainStall = 2 * time.Second
	simMaxMembers = 3
)

func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, v)
	}
	return n
}

func TestSimulation(t *testing.T) {
	steps := envInt(t, "FERRY_SIM_STEPS", 60)
	var seeds []uint64
	if v := os.Getenv("FERRY_SIM_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FERRY_SIM_SEED=%q: %v", v, err)
		}
		seeds = append(seeds, s)
	} else {
		n := 500
		if testing.Short() {
			n = 30
		}
		n = envInt(t, "FERRY_SIM_SEEDS", n)
		for s := 1; s <= n; s++ {
			seeds = append(seeds, uint64(s))
		}
	}
	verbose := os.Getenv("FERRY_SIM_LOG") != ""
	static := os.Getenv("FERRY_SIM_STATIC") != ""
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Parallel()
			sc := generate(seed, steps, static)
			synctest.Test(t, func(t *testing.T) {
				r := runScenario(t, sc)
				if fails := r.check(); len(fails) > 0 || verbose {
					msg := r.report(fails)
					if len(fails) > 0 {
						t.Error(msg)
					} else {
						t.Log(msg)
					}
				}
			})
		})
	}
}

// ---------------------------------------------------------------------------
// Scenario

type behaviour int

const (
	bOK behaviour = iota
	bPoison
	bTransient
	bPanic
	bSlow
	bRetryAfter
)

func (b behaviour) String() string {
	return [...]string{"ok", "poison", "transient", "panic", "slow", "retry-after"}[b]
}

type inputSpec struct {
	key   string
	seq   int
	mode  behaviour
	n     int           // transient: failures before success
	delay time.Duration // slow: sleep; retry-after: requested delay
}

func (in inputSpec) name() string { return fmt.Sprintf("%s/%d", in.key, in.seq) }

func (in inputSpec) String() string {
	switch in.mode {
	case bTransient:
		return fmt.Sprintf("%s(transient×%d)", in.name(), in.n)
	case bSlow, bRetryAfter:
		return fmt.Sprintf("%s(%s %v)", in.name(), in.mode, in.delay)
	case bOK:
		return in.name()
	}
	return fmt.Sprintf("%s(%s)", in.name(), in.mode)
}

type stepKind int

const (
	sPublish stepKind = iota
	sStart
	sStop
	sKill
	sCrash
	sRedriveKey
	sRedriveClass
	sRedriveAll
	sPurgeOne
	sPurgeKey
	sFix
	sBreak
	sWait
	sPause
)

type step struct {
	kind  stepKind
	msgs  []inputSpec // publish
	key   string      // redrive/purge/fix/break key
	seq   int         // break
	class retry.Class // redrive by class
	pick  uint32      // which member / which entry
	after time.Duration
}

func (s step) String() string {
	var d string
	switch s.kind {
	case sPublish:
		parts := make([]string, len(s.msgs))
		for i, m := range s.msgs {
			parts[i] = m.String()
		}
		d = "publish " + strings.Join(parts, " ")
	case sStart:
		d = "start member"
	case sStop:
		d = fmt.Sprintf("stop member #%d (graceful, wait)", s.pick)
	case sKill:
		d = fmt.Sprintf("kill member #%d (cancel, no wait) + start one", s.pick)
	case sCrash:
		d = fmt.Sprintf("crash member #%d (freeze) + start one", s.pick)
	case sPause:
		d = fmt.Sprintf("pause member #%d's heartbeats for twice the session timeout (its handlers go on) + start one", s.pick)
	case sRedriveKey:
		d = "redrive key " + s.key
	case sRedriveClass:
		d = "redrive class " + string(s.class)
	case sRedriveAll:
		d = "redrive all"
	case sPurgeOne:
		d = fmt.Sprintf("purge entry #%d", s.pick)
	case sPurgeKey:
		d = "purge key " + s.key
	case sFix:
		d = "fix key " + s.key
	case sBreak:
		d = fmt.Sprintf("break %s/%d (poison)", s.key, s.seq)
	case sWait:
		d = "wait"
	}
	if s.after > 0 {
		d += fmt.Sprintf(" ; +%v", s.after)
	}
	return d
}

type scenario struct {
	seed        uint64
	partitions  int
	keys        int
	maxAttempts int
	concurrency int
	maxParked   int // 0: the default
	eo          bool
	durable     bool
	commitEvery time.Duration
	heartbeat   time.Duration
	steps       []step
}

func (sc *scenario) String() string {
	return fmt.Sprintf("seed=%d partitions=%d keys=%d maxAttempts=%d concurrency=%d maxParkedKeys=%d exactlyOnce=%v durableRetry=%v commit=%v heartbeat=%v steps=%d",
		sc.seed, sc.partitions, sc.keys, sc.maxAttempts, sc.concurrency, sc.maxParked, sc.eo, sc.durable, sc.commitEvery, sc.heartbeat, len(sc.steps))
}

// generate builds seed's scenario of n steps. static (FERRY_SIM_STATIC)
// keeps one member from the first step on: no stops, kills or crashes.
func generate(seed uint64, n int, static bool) *scenario {
	rng := rand.New(rand.NewPCG(seed, 0xfe77a))
	sc := &scenario{
		seed:        seed,
		partitions:  2 + rng.IntN(3),
		keys:        3 + rng.IntN(10),
		maxAttempts: 2 + rng.IntN(2),
		concurrency: 2 + rng.IntN(3),
		eo:          seed%3 == 0,
		durable:     rng.IntN(2) == 0,
		commitEvery: time.Duration(2+rng.IntN(4)) * time.Millisecond,
		heartbeat:   time.Duration(3+rng.IntN(5)) * time.Millisecond,
	}
	if rng.IntN(4) == 0 {
		sc.maxParked = 2 + rng.IntN(2)
	}
	next := map[string]int{} // key -> next seq
	running := 0
	key := func() string { return fmt.Sprintf("k%d", rng.IntN(sc.keys)) }
	classes := []retry.Class{retry.ClassPermanent, retry.ClassTransient, retry.ClassPanic, dlq.ClassParked, dlq.ClassScheduled}
	if static {
		sc.steps = append(sc.steps, step{kind: sStart})
		running = simMaxMembers
	}
	for len(sc.steps) < n {
		var s step
		r := rng.IntN(100)
		if static && r >= 30 && r < 56 {
			r = 99 // a wait instead of a membership change
		}
		switch {
		case r < 30:
			s.kind = sPublish
			for range 1 + rng.IntN(5) {
				in := inputSpec{key: key()}
				in.seq = next[in.key]
				next[in.key]++
				switch m := rng.IntN(100); {
				case m < 8:
					in.mode = bPoison
				case m < 16:
					in.mode, in.n = bTransient, 1+rng.IntN(4)
				case m < 20:
					in.mode = bPanic
				case m < 26:
					in.mode, in.delay = bSlow, time.Duration(1+rng.IntN(5))*time.Millisecond
				case m < 30:
					in.mode, in.delay = bRetryAfter, simDurable+time.Duration(10+rng.IntN(100))*time.Millisecond
				}
				s.msgs = append(s.msgs, in)
			}
		case r < 40:
			if running >= simMaxMembers {
				continue
			}
			s.kind = sStart
			running++
		case r < 47:
			if running == 0 {
				continue
			}
			s.kind = sStop
			running--
		case r < 52, r < 56:
			if running == 0 {
				continue
			}
			switch {
			case r < 52:
				s.kind = sKill
			case r < 54:
				s.kind = sCrash
			default:
				s.kind = sPause
			}
		case r < 60:
			s.kind, s.key = sRedriveKey, key()
		case r < 64:
			s.kind, s.class = sRedriveClass, classes[rng.IntN(len(classes))]
		case r < 68:
			s.kind = sRedriveAll
		case r < 71:
			s.kind = sPurgeOne
		case r < 73:
			s.kind, s.key = sPurgeKey, key()
		case r < 79:
			s.kind, s.key = sFix, key()
		case r < 84:
			k := key()
			if next[k] == 0 {
				continue
			}
			s.kind, s.key, s.seq = sBreak, k, rng.IntN(next[k])
		default:
			s.kind = sWait
			s.after = time.Duration(5+rng.IntN(100)) * time.Millisecond
		}
		s.pick = rng.Uint32()
		if s.kind != sWait {
			s.after = time.Duration(rng.IntN(10)) * time.Millisecond
		}
		sc.steps = append(sc.steps, s)
	}
	return sc
}

// ---------------------------------------------------------------------------
// A member's view of the backend: everything passes through until the
// member crashes; then its calls fail and its session is left to expire.

var errCrashed = errors.New("sim: member crashed")

type memberBackend struct {
	base *embedded.Backend
	dead atomic.Bool
	// paused: its heartbeats do not reach the group, everything else goes
	// on (a stalled heartbeat, or the moments after a SIGSTOP ends before
	// the member learns its session is gone). lastBeat is when the group
	// last took one (unix nanoseconds): the member's lease ends a session
	// timeout later.
	paused     atomic.Bool
	pausedEver atomic.Bool
	lastBeat   atomic.Int64
}

// lease is when the member's partitions may be another's.
func (m *memberBackend) lease() time.Time {
	return time.Unix(0, m.lastBeat.Load()).Add(simSession)
}

var (
	_ backend.Backend       = (*memberBackend)(nil)
	_ backend.Transactional = (*memberBackend)(nil)
)

func (m *memberBackend) alive() error {
	if m.dead.Load() {
		return errCrashed
	}
	return nil
}

func (m *memberBackend) EnsureTopic(ctx context.Context, topic string, partitions int) error {
	if err := m.alive(); err != nil {
		return err
	}
	return m.base.EnsureTopic(ctx, topic, partitions)
}

func (m *memberBackend) Partitions(ctx context.Context, topic string) (int, error) {
	if err := m.alive(); err != nil {
		return 0, err
	}
	return m.base.Partitions(ctx, topic)
}

func (m *memberBackend) Publish(ctx context.Context, msgs ...*ferry.Message) error {
	if err := m.alive(); err != nil {
		return err
	}
	return m.base.Publish(ctx, msgs...)
}

func (m *memberBackend) Fetch(ctx context.Context, tp backend.TopicPartition, offset uint64, max int) (backend.Fetched, error) {
	if err := m.alive(); err != nil {
		return backend.Fetched{}, err
	}
	res, err := m.base.Fetch(ctx, tp, offset, max)
	if err := m.alive(); err != nil {
		return backend.Fetched{}, err
	}
	return res, err
}

func (m *memberBackend) Committed(ctx context.Context, group string, tp backend.TopicPartition) (uint64, bool, error) {
	if err := m.alive(); err != nil {
		return 0, false, err
	}
	return m.base.Committed(ctx, group, tp)
}

func (m *memberBackend) Bounds(ctx context.Context, tp backend.TopicPartition) (uint64, uint64, error) {
	if err := m.alive(); err != nil {
		return 0, 0, err
	}
	return m.base.Bounds(ctx, tp)
}

func (m *memberBackend) OffsetForTime(ctx context.Context, tp backend.TopicPartition, ts time.Time) (uint64, error) {
	if err := m.alive(); err != nil {
		return 0, err
	}
	return m.base.OffsetForTime(ctx, tp, ts)
}

func unwrapSession(s backend.Session) backend.Session {
	if ms, ok := s.(*memberSession); ok {
		return ms.Session
	}
	return s
}

func (m *memberBackend) Commit(ctx context.Context, s backend.Session, offsets ...backend.Offset) error {
	if err := m.alive(); err != nil {
		return err
	}
	return m.base.Commit(ctx, unwrapSession(s), offsets...)
}

func (m *memberBackend) PublishAndCommit(ctx context.Context, s backend.Session, msgs []*ferry.Message, offsets ...backend.Offset) error {
	if err := m.alive(); err != nil {
		return err
	}
	if s != nil {
		s = unwrapSession(s)
	}
	return m.base.PublishAndCommit(ctx, s, msgs, offsets...)
}

func (m *memberBackend) Join(ctx context.Context, group, member string, topics []string) (backend.Session, error) {
	if err := m.alive(); err != nil {
		return nil, err
	}
	s, err := m.base.Join(ctx, group, member, topics)
	if err != nil {
		return nil, err
	}
	m.lastBeat.Store(time.Now().UnixNano())
	return &memberSession{Session: s, mb: m}, nil
}

func (m *memberBackend) Close() error { return nil } // the harness closes the base

type memberSession struct {
	backend.Session
	mb *memberBackend
}

func (s *memberSession) Heartbeat() error {
	if s.mb.dead.Load() || s.mb.paused.Load() {
		return nil // frozen or paused: no heartbeat reaches the group; the session expires
	}
	err := s.Session.Heartbeat()
	if err == nil {
		s.mb.lastBeat.Store(time.Now().UnixNano())
	}
	return err
}

func (s *memberSession) Release(tp backend.TopicPartition) {
	if !s.mb.dead.Load() {
		s.Session.Release(tp)
	}
}

func (s *memberSession) Leave() {
	if !s.mb.dead.Load() {
		s.Session.Leave()
	}
}

// ---------------------------------------------------------------------------
// Run

type member struct {
	n       int // index in start order
	id      string
	c       *consumer.Consumer
	mb      *memberBackend
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
	crashCh chan struct{}
	crashed bool   // guarded by run.mu
	crashAt uint64 // tick of the crash
	state   string // running, stopped, killed, crashed, paused
	started uint64 // tick of the start
}

type inputState struct {
	spec      inputSpec
	poisoned  bool
	fixed     bool
	failed    int // transient failures given
	panicked  bool
	deferred  bool // retry-after given
	published bool
}

type invocation struct {
	member    string
	key       string
	seq       int
	id        ferry.ID
	redriveOf string
	attempt   int
	start     uint64
	end       uint64 // 0 while running
	outcome   string
	// pastLease: its member was paused and it ran on past the member's
	// lease, which nothing can stop (it started in time): the overlap
	// check leaves it out. Starting past the lease is a violation.
	pastLease bool
}

func (iv *invocation) String() string {
	rd := ""
	if iv.redriveOf != "" {
		rd = " redrive-of=" + short(iv.redriveOf)
	}
	end := "running"
	if iv.end > 0 {
		end = strconv.FormatUint(iv.end, 10)
	}
	return fmt.Sprintf("[%d..%s] %s %s/%d id=%s%s attempt=%d %s", iv.start, end, iv.member, iv.key, iv.seq, short(iv.id.String()), rd, iv.attempt, iv.outcome)
}

type event struct {
	tick    uint64
	kind    consumer.EventKind
	member  string
	key     string
	seq     int // -1 if the message has no payload of ours
	id      ferry.ID
	attempt int
	class   retry.Class
}

func (e event) String() string {
	return fmt.Sprintf("@%d %s %s %s/%d id=%s attempt=%d %s", e.tick, e.member, e.kind, e.key, e.seq, short(e.id.String()), e.attempt, e.class)
}

func short(id string) string {
	if len(id) > 8 {
		return id[len(id)-8:]
	}
	return id
}

type run struct {
	t   *testing.T
	sc  *scenario
	ctx context.Context
	b   *embedded.Backend
	q   *dlq.Queue

	mu       sync.Mutex
	tick     uint64
	inputs   map[string][]*inputState // key -> by seq
	invs     []*invocation
	events   []event
	allFixed bool
	mutate   string // FERRY_SIM_MUTATE
	// leaseViolations: invocations started by a paused member after its
	// lease ended.
	leaseViolations []*invocation
	bg              sync.WaitGroup // the goroutines that end pauses
	mutated         bool
	purged          map[string]map[int]bool // key -> purged seqs
	log             []string                // what each step did
	members         []*member
	nextID          int

	drainErr string
	dead     []dlq.Entry            // dead at the end
	outputs  map[string]map[int]int // key -> seq -> outputs in "out"
	stats    []string
}

func (r *run) tickLocked() uint64 { r.tick++; return r.tick }

func (r *run) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log = append(r.log, fmt.Sprintf("@%d ", r.tick)+fmt.Sprintf(format, args...))
}

func parsePayload(p []byte) (string, int, bool) {
	k, s, ok := strings.Cut(string(p), "/")
	if !ok {
		return "", -1, false
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return "", -1, false
	}
	return k, n, true
}

func runScenario(t *testing.T, sc *scenario) *run {
	ctx := context.Background()
	l, err := commitlog.Open(ctx, "/log", commitlog.WithFS(vfs.NewMemFS()), commitlog.WithDurability(commitlog.DurabilityNone))
	if err != nil {
		t.Fatal(err)
	}
	b := embedded.New(l, embedded.WithSessionTimeout(simSession))
	r := &run{t: t, sc: sc, ctx: ctx, b: b, q: dlq.Open(b, simDLQ), inputs: map[string][]*inputState{}, purged: map[string]map[int]bool{}, mutate: os.Getenv("FERRY_SIM_MUTATE")}
	defer func() {
		// Whatever happened, end every member before the log, and every
		// pause, or the bubble cannot end.
		r.bg.Wait()
		for _, m := range r.members {
			m.cancel()
		}
		for _, m := range r.members {
			<-m.done
		}
		b.Close()
		l.Close()
	}()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.EnsureTopic(ctx, simTopic, sc.partitions))
	must(b.EnsureTopic(ctx, simDLQ, 1))
	must(b.EnsureTopic(ctx, simOut, 1))

	for i, s := range sc.steps {
		r.logf("step %d: %s", i, s)
		r.do(s)
		if s.after > 0 {
			time.Sleep(s.after)
		}
	}
	r.drain()
	// Stop everyone, the frozen members included (their Run returns once
	// their session expired).
	for _, m := range r.members {
		if m.state == "running" {
			m.state = "stopped"
			m.cancel()
		}
	}
	for _, m := range r.members {
		select {
		case <-m.done:
		case <-time.After(30 * time.Second):
			r.drainErr += fmt.Sprintf("; member %s (%s) did not return from Run 30s after its context ended", m.id, m.state)
			t.Errorf("seed %d: member %s did not stop; the bubble will not end", sc.seed, m.id)
			<-m.done
		}
		if m.err != nil && m.state != "crashed" {
			r.logf("member %s Run returned %v", m.id, m.err)
		}
	}
	if sc.eo {
		r.outputs = readOutputs(t, b)
	}
	return r
}

func readOutputs(t *testing.T, b *embedded.Backend) map[string]map[int]int {
	ctx := context.Background()
	out := map[string]map[int]int{}
	tp := backend.TopicPartition{Topic: simOut}
	_, end, err := b.Bounds(ctx, tp)
	if err != nil {
		t.Fatal(err)
	}
	for off := uint64(0); off < end; {
		res, err := b.Fetch(ctx, tp, off, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range res.Messages {
			k, s, ok := parsePayload(m.Payload)
			if !ok {
				t.Fatalf("output %q is not key/seq", m.Payload)
			}
			if out[k] == nil {
				out[k] = map[int]int{}
			}
			out[k][s]++
		}
		off = res.Next
	}
	return out
}

func (r *run) running() []*member {
	var ms []*member
	for _, m := range r.members {
		if m.state == "running" {
			ms = append(ms, m)
		}
	}
	return ms
}

// pickRunning picks a running member by pick, or logs that none runs.
func (r *run) pickRunning(pick uint32) *member {
	ms := r.running()
	if len(ms) == 0 {
		r.logf("  no member runs")
		return nil
	}
	return ms[int(pick)%len(ms)]
}

func (r *run) do(s step) {
	ctx := r.ctx
	switch s.kind {
	case sPublish:
		var msgs []*ferry.Message
		r.mu.Lock()
		for _, in := range s.msgs {
			st := &inputState{spec: in, poisoned: in.mode == bPoison, published: true}
			if len(r.inputs[in.key]) != in.seq {
				r.mu.Unlock()
				r.t.Fatalf("generator: %s published out of order", in.name())
			}
			r.inputs[in.key] = append(r.inputs[in.key], st)
			msgs = append(msgs, &ferry.Message{Topic: simTopic, Key: []byte(in.key), Payload: []byte(in.name())})
		}
		r.mu.Unlock()
		if err := r.b.Publish(ctx, msgs...); err != nil {
			r.t.Fatal(err)
		}
	case sStart:
		r.start()
	case sStop:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "stopped"
		m.cancel()
		<-m.done
		r.logf("  %s stopped (Run returned %v)", m.id, m.err)
	case sKill:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "killed"
		m.cancel()
		r.logf("  %s killed", m.id)
		r.start()
	case sCrash:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "crashed"
		r.mu.Lock()
		m.crashed = true
		m.crashAt = r.tickLocked()
		m.mb.dead.Store(true)
		close(m.crashCh)
		r.mu.Unlock()
		r.logf("  %s crashed", m.id)
		r.start()
	case sPause:
		m := r.pickRunning(s.pick)
		if m == nil {
			return
		}
		m.state = "paused"
		m.mb.pausedEver.Store(true)
		m.mb.paused.Store(true)
		r.logf("  %s paused (lease until +%v)", m.id, time.Until(m.mb.lease()))
		r.start()
		r.bg.Go(func() {
			time.Sleep(2 * simSession)
			m.mb.paused.Store(false) // its next heartbeat finds the session gone
		})
	case sRedriveKey, sRedriveClass, sRedriveAll:
		f := dlq.Filter{}
		switch s.kind {
		case sRedriveKey:
			f.Key = []byte(s.key)
		case sRedriveClass:
			f.Class = s.class
		}
		before, _ := r.q.List(ctx, dlq.Filter{})
		n, err := r.q.Redrive(ctx, dlq.RedriveOpts{Filter: f})
		r.logf("  redrove %d (%v)", n, err)
		r.noteGone(before, "op-redrive")
	case sPurgeOne, sPurgeKey:
		f := dlq.Filter{}
		if s.kind == sPurgeKey {
			f.Key = []byte(s.key)
		}
		entries, err := r.q.List(ctx, f)
		if err != nil {
			r.logf("  list: %v", err)
			return
		}
		if len(entries) == 0 {
			r.logf("  nothing dead")
			return
		}
		if s.kind == sPurgeOne {
			entries = entries[int(s.pick)%len(entries):][:1]
		}
		var names []string
		for _, e := range entries {
			f.IDs = append(f.IDs, e.Original.ID)
			names = append(names, fmt.Sprintf("%s(%s %s)", e.Original.Payload, e.Class, short(e.Original.ID.String())))
		}
		n, err := r.q.Purge(ctx, f)
		// Only what Purge marked counts; it lists again and marks the
		// entries still dead among these IDs, normally all of them.
		r.mu.Lock()
		if n == len(entries) {
			for _, e := range entries {
				k, sq, _ := parsePayload(e.Original.Payload)
				if r.purged[k] == nil {
					r.purged[k] = map[int]bool{}
				}
				r.purged[k][sq] = true
			}
		}
		r.mu.Unlock()
		r.logf("  purged %d of %s (%v)", n, strings.Join(names, " "), err)
		r.noteGone(entries, "op-purge")
		if n != len(entries) {
			// An entry redriven between List and Purge: which ones were
			// marked is unknown; resolve them one by one.
			r.resolvePurge(entries)
		}
	case sFix:
		r.mu.Lock()
		var fixed []int
		for _, in := range r.inputs[s.key] {
			if in.poisoned && !in.fixed {
				in.fixed = true
				fixed = append(fixed, in.spec.seq)
			}
		}
		r.mu.Unlock()
		r.logf("  fixed seqs %v", fixed)
	case sBreak:
		r.mu.Lock()
		in := r.inputs[s.key][s.seq]
		in.poisoned, in.fixed = true, false
		r.mu.Unlock()
	case sWait:
	}
}

// noteGone records, as an event of the operator, which of the entries
// dead before an operator step are no longer dead after it (for the
// histories a failure prints; in the meantime a consumer may have
// redriven some too).
func (r *run) noteGone(before []dlq.Entry, kind consumer.EventKind) {
	after, err := r.q.List(r.ctx, dlq.Filter{})
	if err != nil {
		return
	}
	still := map[ferry.ID]bool{}
	for _, e := range after {
		still[e.Original.ID] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range before {
		if !still[e.Original.ID] {
			k, sq, _ := parsePayload(e.Original.Payload)
			r.events = append(r.events, event{tick: r.tickLocked(), kind: kind, member: "operator", key: k, seq: sq, id: e.Original.ID, class: e.Class})
		}
	}
}

// resolvePurge records as purged those of entries whose latest state is
// purged.
func (r *run) resolvePurge(entries []dlq.Entry) {
	for _, e := range entries {
		got, err := r.q.Get(r.ctx, e.Original.ID)
		if err == nil && got.State == dlq.StatePurged {
			k, sq, _ := parsePayload(e.Original.Payload)
			r.mu.Lock()
			if r.purged[k] == nil {
				r.purged[k] = map[int]bool{}
			}
			r.purged[k][sq] = true
			r.mu.Unlock()
			r.logf("  %s purged", e.Original.Payload)
		}
	}
}

func (r *run) start() *member {
	sc := r.sc
	r.nextID++
	m := &member{n: r.nextID, id: fmt.Sprintf("m%d", r.nextID), mb: &memberBackend{base: r.b}, done: make(chan struct{}), crashCh: make(chan struct{}), state: "running"}
	opts := []consumer.Opt{
		consumer.WithMember(m.id),
		consumer.WithConcurrency(sc.concurrency),
		consumer.WithRetryPolicy(retry.Policy{InitialBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, MaxAttempts: sc.maxAttempts}),
		consumer.WithCommitInterval(sc.commitEvery),
		consumer.WithHeartbeatInterval(sc.heartbeat),
		consumer.WithSeed(sc.seed*31 + uint64(m.n)),
		consumer.WithObserver(r.observer()),
	}
	if sc.durable {
		opts = append(opts, consumer.WithDurableRetry(simDurable))
	} else {
		opts = append(opts, consumer.WithDurableRetry(0))
	}
	if sc.maxParked > 0 {
		opts = append(opts, consumer.WithMaxParkedKeys(sc.maxParked))
	}
	if sc.eo {
		store, err := idempotency.OpenLog(r.ctx, r.b, simStore, time.Hour, 100000)
		if err != nil {
			r.t.Fatal(err)
		}
		opts = append(opts, consumer.WithExactlyOnce(store))
	}
	c, err := consumer.New(m.mb, simGroup, []string{simTopic}, r.handler(m), opts...)
	if err != nil {
		r.t.Fatal(err)
	}
	m.c = c
	ctx, cancel := context.WithCancel(r.ctx)
	m.cancel = cancel
	go func() {
		defer close(m.done)
		m.err = c.Run(ctx)
	}()
	r.members = append(r.members, m)
	r.mu.Lock()
	m.started = r.tickLocked()
	r.mu.Unlock()
	r.logf("  %s started", m.id)
	return m
}

var (
	errPoison    = errors.New("sim: poison")
	errTransient = errors.New("sim: transient failure")
	errLater     = errors.New("sim: come back later")
)

func (r *run) handler(m *member) consumer.Handler {
	return func(ctx context.Context, msg *ferry.Message) (err error) {
		key, seq, ok := parsePayload(msg.Payload)
		if !ok {
			return ferry.Permanent(fmt.Errorf("sim: payload %q is not key/seq", msg.Payload))
		}
		of, _ := msg.Header(dlq.HeaderRedriveOf)
		r.mu.Lock()
		iv := &invocation{member: m.id, key: key, seq: seq, id: msg.ID, redriveOf: string(of), attempt: consumer.Attempt(ctx), start: r.tickLocked()}
		r.invs = append(r.invs, iv)
		if m.crashed {
			iv.end, iv.outcome = iv.start, "zombie(after crash)"
			r.mu.Unlock()
			return errCrashed
		}
		if m.mb.pausedEver.Load() && !time.Now().Before(m.mb.lease()) {
			iv.outcome = "started past its member's lease"
			r.leaseViolations = append(r.leaseViolations, iv)
		}
		if seq >= len(r.inputs[key]) {
			iv.end, iv.outcome = r.tickLocked(), "unknown input"
			r.mu.Unlock()
			return ferry.Permanent(fmt.Errorf("sim: unknown input %s/%d", key, seq))
		}
		in := r.inputs[key][seq]
		var fail error
		var boom bool
		var delay time.Duration
		outcome := "ok"
		switch {
		case in.poisoned && !in.fixed && !r.allFixed:
			fail, outcome = ferry.Permanent(errPoison), "poison"
		case in.spec.mode == bTransient && in.failed < in.spec.n:
			in.failed++
			fail, outcome = errTransient, fmt.Sprintf("transient %d/%d", in.failed, in.spec.n)
		case in.spec.mode == bPanic && !in.panicked:
			in.panicked, boom, outcome = true, true, "panic"
		case in.spec.mode == bRetryAfter && !in.deferred:
			in.deferred = true
			fail, outcome = ferry.RetryAfter(errLater, in.spec.delay), "retry-after "+in.spec.delay.String()
		case in.spec.mode == bSlow:
			delay = in.spec.delay
		}
		r.mu.Unlock()
		finish := func(outcome string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			iv.end = r.tickLocked()
			if m.crashed {
				// The process died while this ran: it ends at the crash
				// and had no effect.
				iv.end, iv.outcome = m.crashAt, "cut by crash ("+outcome+")"
				err = errCrashed
				return
			}
			iv.outcome = outcome
			if m.mb.pausedEver.Load() && !time.Now().Before(m.mb.lease()) {
				iv.pastLease = true
			}
		}
		if delay > 0 {
			tm := time.NewTimer(delay)
			select {
			case <-tm.C:
			case <-ctx.Done():
				tm.Stop()
				finish("canceled")
				return ctx.Err()
			case <-m.crashCh:
				tm.Stop()
				finish("crash")
				return errCrashed
			}
		}
		if boom {
			finish(outcome)
			panic("sim: panic once")
		}
		if fail == nil && r.sc.eo {
			if e := consumer.Emit(ctx, &ferry.Message{ID: ferry.NewID(), Topic: simOut, Key: []byte(key), Payload: msg.Payload}); e != nil {
				fail, outcome = e, "emit failed: "+e.Error()
			}
			if r.mutation("dup") {
				consumer.Emit(ctx, &ferry.Message{ID: ferry.NewID(), Topic: simOut, Key: []byte(key), Payload: msg.Payload})
			}
		}
		if fail == nil {
			r.mu.Lock()
			if last := len(r.inputs[key]) - 1; last > seq+1 && r.mutate == "order" && !r.mutated {
				r.mutated = true
				r.events = append(r.events, event{tick: r.tickLocked(), kind: consumer.EventHandled, member: "fake", key: key, seq: last})
			}
			if r.mutate == "overlap" && !r.mutated {
				r.mutated = true
				r.invs = append(r.invs, &invocation{member: "fake", key: key, seq: seq, start: iv.start, end: r.tickLocked(), outcome: "fake"})
			}
			r.mu.Unlock()
		}
		err = fail
		finish(outcome)
		return err
	}
}

func (r *run) observer() func(consumer.Event) {
	return func(e consumer.Event) {
		ev := event{kind: e.Kind, member: e.Member, attempt: e.Attempt, class: e.Class, seq: -1}
		if e.Message != nil {
			ev.id = e.Message.ID
			ev.key = string(e.Message.Key)
			if k, s, ok := parsePayload(e.Message.Payload); ok {
				ev.key, ev.seq = k, s
			}
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if e.Kind == consumer.EventHandled && r.mutate == "lost" && !r.mutated {
			r.mutated = true
			return
		}
		ev.tick = r.tickLocked()
		r.events = append(r.events, ev)
	}
}

// mutation reports, once per run, whether the checker self-test m is on.
func (r *run) mutation(m string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mutate != m || r.mutated {
		return false
	}
	r.mutated = true
	return true
}

// handledSeqs returns, per key, the seqs handled so far.
func (r *run) handledSeqs() map[string]map[int]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := map[string]map[int]bool{}
	for _, e := range r.events {
		if e.kind == consumer.EventHandled && e.seq >= 0 {
			if h[e.key] == nil {
				h[e.key] = map[int]bool{}
			}
			h[e.key][e.seq] = true
		}
	}
	return h
}

// missing lists the inputs neither handled nor purged.
func (r *run) missing() []string {
	h := r.handledSeqs()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, k := range sortedKeys(r.inputs) {
		for _, in := range r.inputs[k] {
			if !h[k][in.spec.seq] && !r.purged[k][in.spec.seq] {
				out = append(out, in.spec.name())
			}
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		a, _ := strconv.Atoi(strings.TrimPrefix(ks[i], "k"))
		b, _ := strconv.Atoi(strings.TrimPrefix(ks[j], "k"))
		return a < b || a == b && ks[i] < ks[j]
	})
	return ks
}

func (r *run) drain() {
	r.mu.Lock()
	r.allFixed = true
	r.mu.Unlock()
	r.logf("drain: every input fixed")
	if len(r.running()) == 0 {
		r.start()
	}
	began := time.Now()
	deadline := began.Add(simDrainLimit)
	// A drain that handles nothing new for simDrainStall is stuck: waiting
	// longer only grows the DLQ (each redrive may park the copies again).
	progress, lastProgress := -1, began
	for {
		dead, err := r.q.List(r.ctx, dlq.Filter{})
		miss := r.missing()
		if err == nil && len(dead) == 0 && len(miss) == 0 {
			r.logf("drain: quiescent after %v", time.Since(began))
			return
		}
		if len(miss) != progress {
			progress, lastProgress = len(miss), time.Now()
		}
		stalled := time.Since(lastProgress) > simDrainStall
		if stalled || time.Now().After(deadline) {
			r.dead = dead
			why := fmt.Sprintf("not quiescent after %v", time.Since(began))
			if stalled {
				why = fmt.Sprintf("stuck: nothing new handled for %v (%v into the drain)", simDrainStall, time.Since(began))
			}
			r.drainErr = fmt.Sprintf("%s: %d dead entries (list err %v), missing inputs %v", why, len(dead), err, miss)
			for _, m := range r.running() {
				r.stats = append(r.stats, fmt.Sprintf("%s: %+v", m.id, m.c.Stats()))
			}
			r.logf("drain: %s", r.drainErr)
			return
		}
		if len(dead) > 0 {
			if _, err := r.q.Redrive(r.ctx, dlq.RedriveOpts{}); err != nil {
				r.logf("drain: redrive: %v", err)
			}
			r.noteGone(dead, "drain-redrive")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Checker

type violation struct {
	invariant string
	what      string
	keys      []string // keys whose history to print
}

func (r *run) check() []violation {
	var out []violation
	add := func(inv, what string, keys ...string) {
		out = append(out, violation{invariant: inv, what: what, keys: keys})
	}
	if r.drainErr != "" {
		add("quiescence", r.drainErr)
	}
	// 6: single ownership: a paused member starts nothing once its lease
	// has ended (its partitions may be another's by then).
	for i, iv := range r.leaseViolations {
		if i == 3 {
			break
		}
		add("lease", fmt.Sprintf("key %s: %v started after its member's lease ended", iv.key, iv), iv.key)
	}
	handled := r.handledSeqs()

	// 1 and 5: lost inputs; accounting.
	for _, k := range sortedKeys(r.inputs) {
		var lost []int
		for _, in := range r.inputs[k] {
			if !handled[k][in.spec.seq] && !r.purged[k][in.spec.seq] {
				lost = append(lost, in.spec.seq)
			}
		}
		if len(lost) > 0 {
			add("lost", fmt.Sprintf("key %s: seqs %v neither handled nor purged", k, lost), k)
		}
	}
	for _, k := range sortedKeys(handled) {
		for s := range handled[k] {
			if s >= len(r.inputs[k]) {
				add("dlq-accounting", fmt.Sprintf("%s/%d handled but never published", k, s), k)
			}
		}
	}
	if len(r.dead) > 0 {
		var names []string
		for _, e := range r.dead {
			names = append(names, fmt.Sprintf("%s(%s)", e.Original.Payload, e.Class))
		}
		add("dlq-accounting", fmt.Sprintf("%d entries still dead at the end: %s", len(r.dead), strings.Join(names, " ")))
	}

	// 2: order of first successful handling.
	first := map[string][]int{}
	firstEv := map[string]map[int]event{}
	for _, e := range r.events {
		if e.kind != consumer.EventHandled || e.seq < 0 {
			continue
		}
		if firstEv[e.key] == nil {
			firstEv[e.key] = map[int]event{}
		}
		if _, ok := firstEv[e.key][e.seq]; !ok {
			firstEv[e.key][e.seq] = e
			first[e.key] = append(first[e.key], e.seq)
		}
	}
	started := map[string]uint64{}
	for _, m := range r.members {
		started[m.id] = m.started
	}
	for _, k := range sortedKeys(first) {
		last := -1
		for _, s := range first[k] {
			if r.purged[k][s] {
				continue
			}
			if s < last {
				// Where the earlier seq was when the later one was handled.
				later := firstEv[k][last]
				where := "no event yet"
				for _, e := range r.events {
					if e.tick > later.tick {
						break
					}
					if e.key == k && e.seq == s && e.kind != consumer.EventStarted {
						where = e.String()
					}
				}
				add("order", fmt.Sprintf("key %s: %s/%d first handled after %s/%d (first handlings, purged ignored: %v); %s/%d was handled %s (member started @%d), when %s/%d's last event was: %s",
					k, k, s, k, last, withoutPurged(first[k], r.purged[k]), k, last, later, started[later.member], k, s, where), k)
				break
			}
			last = s
		}
	}

	// 3: overlapping invocations of one key.
	crashAt := map[string]uint64{}
	for _, m := range r.members {
		if m.crashed {
			crashAt[m.id] = m.crashAt
		}
	}
	byKey := map[string][]*invocation{}
	for _, iv := range r.invs {
		if strings.HasPrefix(iv.outcome, "zombie") || iv.pastLease {
			continue
		}
		byKey[iv.key] = append(byKey[iv.key], iv)
	}
	endOf := func(iv *invocation) uint64 {
		e := iv.end
		if e == 0 {
			e = ^uint64(0)
		}
		if c, ok := crashAt[iv.member]; ok && c < e {
			e = c
		}
		return e
	}
	for _, k := range sortedKeys(byKey) {
		ivs := byKey[k]
		sort.Slice(ivs, func(i, j int) bool { return ivs[i].start < ivs[j].start })
		n := 0
		for i := 1; i < len(ivs) && n < 3; i++ {
			for j := 0; j < i; j++ {
				if endOf(ivs[j]) > ivs[i].start {
					add("overlap", fmt.Sprintf("key %s: %v and %v ran at once", k, ivs[j], ivs[i]), k)
					n++
					break
				}
			}
		}
	}

	// 4: exactly one output per handled input.
	if r.sc.eo {
		for _, k := range sortedKeys(r.inputs) {
			for _, in := range r.inputs[k] {
				s := in.spec.seq
				got := r.outputs[k][s]
				want := 0
				if handled[k][s] {
					want = 1
				}
				if got != want {
					add("exactly-once", fmt.Sprintf("%s/%d: %d outputs in %q, want %d (handled=%v purged=%v)", k, s, got, simOut, want, handled[k][s], r.purged[k][s]), k)
				}
			}
		}
	}
	return out
}

func withoutPurged(seqs []int, purged map[int]bool) []int {
	var out []int
	for _, s := range seqs {
		if !purged[s] {
			out = append(out, s)
		}
	}
	return out
}

func (r *run) report(fails []violation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "simulation %s\n", r.sc)
	fmt.Fprintf(&b, "rerun: FERRY_SIM_SEED=%d go test -race -run 'TestSimulation' ./consumer/ -count=1\n", r.sc.seed)
	if len(fails) == 0 {
		b.WriteString("all invariants hold\n")
	}
	invariants := map[string]int{}
	var keys []string
	for _, f := range fails {
		invariants[f.invariant]++
		for _, k := range f.keys {
			if !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	if len(fails) > 0 {
		var names []string
		for _, n := range sortedKeys(invariants) {
			names = append(names, fmt.Sprintf("%s×%d", n, invariants[n]))
		}
		fmt.Fprintf(&b, "VIOLATED: %s\n", strings.Join(names, ", "))
	}
	for i, f := range fails {
		if i == 20 {
			fmt.Fprintf(&b, "... %d more violations\n", len(fails)-i)
			break
		}
		fmt.Fprintf(&b, "  [%s] %s\n", f.invariant, f.what)
	}
	b.WriteString("scenario and what each step did:\n")
	for _, l := range r.log {
		b.WriteString("  " + l + "\n")
	}
	for _, s := range r.stats {
		b.WriteString("  stats " + s + "\n")
	}
	if len(keys) > 6 {
		keys = keys[:6]
	}
	for _, k := range keys {
		fmt.Fprintf(&b, "history of key %s (purged %v):\n", k, sortedInts(r.purged[k]))
		var lines []struct {
			tick uint64
			s    string
		}
		for _, iv := range r.invs {
			if iv.key == k {
				lines = append(lines, struct {
					tick uint64
					s    string
				}{iv.start, "  invocation " + iv.String()})
			}
		}
		for _, e := range r.events {
			if e.key == k && e.kind != consumer.EventStarted {
				lines = append(lines, struct {
					tick uint64
					s    string
				}{e.tick, "  event      " + e.String()})
			}
		}
		sort.SliceStable(lines, func(i, j int) bool { return lines[i].tick < lines[j].tick })
		if len(lines) > 200 {
			fmt.Fprintf(&b, "  (%d lines, last 200)\n", len(lines))
			lines = lines[len(lines)-200:]
		}
		for _, l := range lines {
			b.WriteString(l.s + "\n")
		}
	}
	return b.String()
}

func sortedInts(m map[int]bool) []int {
	var out []int
	for s := range m {
		out = append(out, s)
	}
	sort.Ints(out)
	return out
}
