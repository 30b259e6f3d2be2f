package groups

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Opt configures a Coordinator.
type Opt interface{ apply(*cfg) }

type optFunc func(*cfg)

func (f optFunc) apply(c *cfg) { f(c) }

type cfg struct {
	logger       *slog.Logger
	minSession   time.Duration
	maxSession   time.Duration
	initialDelay time.Duration
	maxGroupSize int
}

func defaultCfg() cfg {
	return cfg{
		logger:     slog.New(slog.DiscardHandler),
		minSession: 6 * time.Second,
		maxSession: 30 * time.Minute,
	}
}

// validate checks every bound in one place.
func (c *cfg) validate() error {
	switch {
	case c.logger == nil:
		return fmt.Errorf("groups: nil logger")
	// Below a millisecond the value cannot be expressed in the protocol's
	// SessionTimeoutMillis at all.
	case c.minSession < time.Millisecond:
		return fmt.Errorf("groups: minimum session timeout %v is below 1ms", c.minSession)
	case c.maxSession < c.minSession:
		return fmt.Errorf("groups: maximum session timeout %v is below the minimum %v", c.maxSession, c.minSession)
	// The protocol carries timeouts as int32 milliseconds.
	case c.maxSession > time.Duration(1<<31-1)*time.Millisecond:
		return fmt.Errorf("groups: maximum session timeout %v does not fit int32 milliseconds", c.maxSession)
	case c.initialDelay < 0:
		return fmt.Errorf("groups: negative initial rebalance delay %v", c.initialDelay)
	case c.maxGroupSize < 0:
		return fmt.Errorf("groups: negative maximum group size %d", c.maxGroupSize)
	}
	return nil
}

// WithLogger sets the structured logger (default: discard). Membership
// changes and rebalances are logged at Info, expiries at Warn.
func WithLogger(l *slog.Logger) Opt { return optFunc(func(c *cfg) { c.logger = l }) }

// WithSessionTimeoutBounds sets the session timeouts a JoinGroup may ask
// for; others get INVALID_SESSION_TIMEOUT. The defaults are Kafka's
// group.min.session.timeout.ms and group.max.session.timeout.ms: 6 s and
// 30 min. min may be as low as 1 ms (for tests).
func WithSessionTimeoutBounds(min, max time.Duration) Opt {
	return optFunc(func(c *cfg) { c.minSession, c.maxSession = min, max })
}

// WithInitialRebalanceDelay sets how long the first rebalance of an Empty
// group waits for more members (Kafka's group.initial.rebalance.delay.ms):
// each new member arriving within the delay extends it by the same amount,
// up to the rebalance timeout. The default is 0 — the first member forms a
// generation at once — which suits a single-process server and tests; set 3 s
// to match Kafka's broker default and save a rebalance or two when a whole
// group starts together.
func WithInitialRebalanceDelay(d time.Duration) Opt {
	return optFunc(func(c *cfg) { c.initialDelay = d })
}

// WithMaxGroupSize bounds the members (including those that were told
// MEMBER_ID_REQUIRED and have not rejoined) of one group; a join past it gets
// GROUP_MAX_SIZE_REACHED. The default, 0, means no bound, as Kafka's
// group.max.size default.
func WithMaxGroupSize(n int) Opt { return optFunc(func(c *cfg) { c.maxGroupSize = n }) }

// Coordinator runs the classic consumer groups of one server. Its methods
// are safe for concurrent use. The zero value is not usable: call New.
type Coordinator struct {
	cfg cfg
	log *slog.Logger

	mu     sync.Mutex
	groups map[string]*group
	closed bool
}

// New returns a Coordinator. It panics if an option is out of bounds (a
// programming error, like a bad regexp passed to regexp.MustCompile).
func New(opts ...Opt) *Coordinator {
	c := defaultCfg()
	for _, o := range opts {
		o.apply(&c)
	}
	if err := c.validate(); err != nil {
		panic(err)
	}
	return &Coordinator{cfg: c, log: c.logger, groups: make(map[string]*group)}
}

// Close fails every blocked Join and Sync with COORDINATOR_NOT_AVAILABLE,
// stops every timer and forgets every group. Calls after Close answer
// COORDINATOR_NOT_AVAILABLE. Close is idempotent.
func (c *Coordinator) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for _, g := range c.groups {
		g.shutdownLocked(kerr.CoordinatorNotAvailable.Code)
	}
	c.groups = nil
}

type clientKey struct{}

type clientInfo struct{ id, host string }

// ClientContext returns ctx carrying the client ID and host of the
// connection a request came on (the request header's client ID and the
// peer address). Join uses them to build member IDs (clientID-uuid) and
// Describe reports them; without them both are empty.
func ClientContext(ctx context.Context, clientID, clientHost string) context.Context {
	return context.WithValue(ctx, clientKey{}, clientInfo{clientID, clientHost})
}

func clientFrom(ctx context.Context) clientInfo {
	ci, _ := ctx.Value(clientKey{}).(clientInfo)
	return ci
}

// state is a group's state; its String is the name Kafka reports.
type state int8

const (
	stateEmpty state = iota
	statePreparing
	stateCompleting
	stateStable
	stateDead
)

var stateNames = [...]string{"Empty", "PreparingRebalance", "CompletingRebalance", "Stable", "Dead"}

func (s state) String() string { return stateNames[s] }

// group is one consumer group. Every field is guarded by Coordinator.mu.
type group struct {
	c            *Coordinator
	name         string
	state        state
	generation   int32
	protocolType string
	protocol     string // chosen for the current generation; "" unless Completing or Stable
	leader       string

	members map[string]*member
	pending map[string]*pendingMember // told MEMBER_ID_REQUIRED, not yet rejoined
	static  map[string]string         // instance ID → member ID
	seq     uint64                    // join order, to pick leaders deterministically

	// The join phase's deadline (rebalance timeout, or the initial delay).
	joinToken    uint64
	joinTimer    *time.Timer
	initialDelay bool          // the deadline is an initial delay: only the timer completes the join
	initialLeft  time.Duration // how much more the initial delay may be extended
	newMember    bool          // a member arrived during the current initial delay

	// Members that have not sent SyncGroup after the join are removed when
	// this timer fires.
	syncToken uint64
	syncTimer *time.Timer
}

type member struct {
	id               string
	instanceID       *string
	clientID         string
	clientHost       string
	sessionTimeout   time.Duration
	rebalanceTimeout time.Duration
	protocolType     string
	protocols        []kmsg.JoinGroupRequestProtocol
	assignment       []byte
	order            uint64 // when it first joined, for leader choice
	isNew            bool   // added in the current join phase

	join   *joinWaiter // non-nil while blocked in JoinGroup
	sync   *syncWaiter // non-nil while blocked in SyncGroup
	synced bool        // sent SyncGroup in the current generation

	sessionToken uint64
	session      *time.Timer
}

type pendingMember struct {
	id    string
	token uint64
	timer *time.Timer
}

type joinWaiter struct {
	version int16
	ch      chan *kmsg.JoinGroupResponse // buffered 1; sent to once, under mu
}

type syncWaiter struct {
	version int16
	ch      chan *kmsg.SyncGroupResponse // buffered 1; sent to once, under mu
}

func (c *Coordinator) newGroupLocked(name string) *group {
	g := &group{
		c:       c,
		name:    name,
		members: make(map[string]*member),
		pending: make(map[string]*pendingMember),
		static:  make(map[string]string),
	}
	c.groups[name] = g
	return g
}

// liveLocked reports whether g is still the coordinator's group of its name
// (a timer may fire for a group deleted or shut down meanwhile).
func (g *group) liveLocked() bool { return !g.c.closed && g.c.groups[g.name] == g }

func newMemberID(prefix string) string { return prefix + "-" + uuid.NewString() }

// restartSessionLocked (re)starts m's session timer unless m is blocked in
// Join or Sync, where its session is satisfied by the waiting call itself.
func (g *group) restartSessionLocked(m *member) {
	g.stopSessionLocked(m)
	if m.join != nil || m.sync != nil {
		return
	}
	tok := m.sessionToken
	m.session = time.AfterFunc(m.sessionTimeout, func() {
		g.c.mu.Lock()
		defer g.c.mu.Unlock()
		if !g.liveLocked() || g.members[m.id] != m || m.sessionToken != tok {
			return
		}
		g.c.log.Warn("group member session expired", "group", g.name, "member", m.id, "session_timeout", m.sessionTimeout)
		g.removeMemberLocked(m, "session timeout")
	})
}

func (g *group) stopSessionLocked(m *member) {
	m.sessionToken++
	if m.session != nil {
		m.session.Stop()
		m.session = nil
	}
}

// replyJoinLocked answers m's blocked JoinGroup, if any.
func (g *group) replyJoinLocked(m *member, resp func(version int16) *kmsg.JoinGroupResponse) {
	if m.join == nil {
		return
	}
	w := m.join
	m.join = nil
	w.ch <- resp(w.version)
}

// replySyncLocked answers m's blocked SyncGroup, if any.
func (g *group) replySyncLocked(m *member, resp func(version int16) *kmsg.SyncGroupResponse) {
	if m.sync == nil {
		return
	}
	w := m.sync
	m.sync = nil
	w.ch <- resp(w.version)
}

// dropMemberLocked forgets m: its blocked calls get code, its timer stops,
// and a new leader is chosen if it led. It changes no state: callers decide.
func (g *group) dropMemberLocked(m *member, code int16) {
	g.replyJoinLocked(m, func(v int16) *kmsg.JoinGroupResponse { return joinError(v, m.id, code) })
	g.replySyncLocked(m, func(v int16) *kmsg.SyncGroupResponse { return syncError(v, code) })
	g.stopSessionLocked(m)
	delete(g.members, m.id)
	if m.instanceID != nil && g.static[*m.instanceID] == m.id {
		delete(g.static, *m.instanceID)
	}
	if g.leader == m.id {
		g.leader = ""
		var next *member
		for _, o := range g.members {
			if next == nil || o.order < next.order {
				next = o
			}
		}
		if next != nil {
			g.leader = next.id
		}
	}
}

// removeMemberLocked removes m and moves the group on: a rebalance for the
// rest if Stable or Completing, a completion check if Preparing.
func (g *group) removeMemberLocked(m *member, reason string) {
	g.c.log.Info("group member removed", "group", g.name, "member", m.id, "reason", reason)
	g.dropMemberLocked(m, kerr.UnknownMemberID.Code)
	switch g.state {
	case stateStable, stateCompleting:
		g.prepareRebalanceLocked("member removed: " + reason)
	case statePreparing:
		g.tryCompleteJoinLocked()
	}
}

func (g *group) rebalanceTimeoutLocked() time.Duration {
	var d time.Duration
	for _, m := range g.members {
		d = max(d, m.rebalanceTimeout)
	}
	return d
}

func (g *group) stopJoinTimerLocked() {
	g.joinToken++
	g.initialDelay = false
	if g.joinTimer != nil {
		g.joinTimer.Stop()
		g.joinTimer = nil
	}
}

func (g *group) stopSyncTimerLocked() {
	g.syncToken++
	if g.syncTimer != nil {
		g.syncTimer.Stop()
		g.syncTimer = nil
	}
}

// shutdownLocked answers every blocked call with code and stops every timer.
func (g *group) shutdownLocked(code int16) {
	g.stopJoinTimerLocked()
	g.stopSyncTimerLocked()
	for _, p := range g.pending {
		g.stopPendingLocked(p)
	}
	for _, m := range g.members {
		g.dropMemberLocked(m, code)
	}
	g.state = stateDead
}

func (g *group) stopPendingLocked(p *pendingMember) {
	p.token++
	p.timer.Stop()
	delete(g.pending, p.id)
}

// forgetIfUnformedLocked drops an Empty group that never formed a
// generation and has no one pending, so stray joins cannot grow the map.
func (g *group) forgetIfUnformedLocked() {
	if g.state == stateEmpty && g.generation == 0 && len(g.members) == 0 && len(g.pending) == 0 && g.liveLocked() {
		g.stopJoinTimerLocked()
		g.stopSyncTimerLocked()
		delete(g.c.groups, g.name)
	}
}

// fencedLocked reports whether instanceID is held by a member other than
// memberID (Kafka's isStaticMemberFenced).
func (g *group) fencedLocked(instanceID *string, memberID string) bool {
	if instanceID == nil {
		return false
	}
	id, ok := g.static[*instanceID]
	return ok && id != memberID
}

func strPtr(s string) *string { return &s }
