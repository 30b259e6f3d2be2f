package groups

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Join handles JoinGroup. It blocks until the group's join phase completes
// and returns this member's part of the result: the generation, the chosen
// protocol, the leader and, for the leader only, every member's metadata.
// Errors come back as the response's ErrorCode (see the package doc for
// when each is returned).
//
// If ctx ends first, Join returns REBALANCE_IN_PROGRESS and withdraws the
// join: a member that joined for the first time in this rebalance is
// removed; an existing member stays, with its session running again, and is
// removed at the end of the rebalance unless it rejoins in time.
func (c *Coordinator) Join(ctx context.Context, version int16, req *kmsg.JoinGroupRequest) *kmsg.JoinGroupResponse {
	c.mu.Lock()
	resp, g, m, w := c.joinLocked(version, req, clientFrom(ctx))
	c.mu.Unlock()
	if resp != nil {
		return resp
	}
	select {
	case r := <-w.ch:
		return r
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case r := <-w.ch: // answered while we waited for the lock
		return r
	default:
	}
	// Every answer is sent under mu, so m.join is still w and m is
	// still a member of the live group g.
	m.join = nil
	if m.isNew {
		g.c.log.Info("group member removed", "group", g.name, "member", m.id, "reason", "first join abandoned")
		g.dropMemberLocked(m, kerr.UnknownMemberID.Code)
		g.forgetIfUnformedLocked()
	} else {
		g.restartSessionLocked(m)
	}
	g.tryCompleteJoinLocked()
	return joinError(version, m.id, kerr.RebalanceInProgress.Code)
}

// joinLocked either answers at once (resp) or returns the waiter that will
// carry the answer.
func (c *Coordinator) joinLocked(version int16, req *kmsg.JoinGroupRequest, ci clientInfo) (*kmsg.JoinGroupResponse, *group, *member, *joinWaiter) {
	fail := func(code int16) (*kmsg.JoinGroupResponse, *group, *member, *joinWaiter) {
		return joinError(version, req.MemberID, code), nil, nil, nil
	}
	if c.closed {
		return fail(kerr.CoordinatorNotAvailable.Code)
	}
	if req.Group == "" {
		return fail(kerr.InvalidGroupID.Code)
	}
	session := time.Duration(req.SessionTimeoutMillis) * time.Millisecond
	if session < c.cfg.minSession || session > c.cfg.maxSession {
		return fail(kerr.InvalidSessionTimeout.Code)
	}
	if req.ProtocolType == "" || len(req.Protocols) == 0 {
		return fail(kerr.InconsistentGroupProtocol.Code)
	}
	j := joinArgs{
		version:   version,
		req:       req,
		client:    ci,
		session:   session,
		rebalance: time.Duration(req.RebalanceTimeoutMillis) * time.Millisecond,
	}
	if version < 1 || j.rebalance <= 0 { // v0 has no rebalance timeout: the session timeout serves
		j.rebalance = session
	}
	if version >= 5 {
		j.instance = req.InstanceID
	}

	g := c.groups[req.Group]
	if g == nil {
		if req.MemberID != "" {
			return fail(kerr.UnknownMemberID.Code)
		}
		g = c.newGroupLocked(req.Group)
	}
	if !g.supportsLocked(req.MemberID, req.ProtocolType, req.Protocols) {
		g.forgetIfUnformedLocked()
		return fail(kerr.InconsistentGroupProtocol.Code)
	}
	var (
		resp *kmsg.JoinGroupResponse
		m    *member
		w    *joinWaiter
	)
	if req.MemberID == "" {
		resp, m, w = g.joinUnknownLocked(&j)
	} else {
		resp, m, w = g.joinKnownLocked(&j)
	}
	if resp != nil {
		g.forgetIfUnformedLocked()
		return resp, nil, nil, nil
	}
	return nil, g, m, w
}

// joinArgs is a validated JoinGroup.
type joinArgs struct {
	version   int16
	req       *kmsg.JoinGroupRequest
	client    clientInfo
	session   time.Duration
	rebalance time.Duration
	instance  *string // nil below v5
}

func (j *joinArgs) fail(code int16) (*kmsg.JoinGroupResponse, *member, *joinWaiter) {
	return joinError(j.version, j.req.MemberID, code), nil, nil
}

func (g *group) joinUnknownLocked(j *joinArgs) (*kmsg.JoinGroupResponse, *member, *joinWaiter) {
	if j.instance != nil {
		if old := g.members[g.static[*j.instance]]; old != nil {
			return g.replaceStaticLocked(old, j)
		}
	}
	if n := g.c.cfg.maxGroupSize; n > 0 && len(g.members)+len(g.pending) >= n {
		return j.fail(kerr.GroupMaxSizeReached.Code)
	}
	prefix := j.client.id
	if j.instance != nil {
		prefix = *j.instance
	}
	id := newMemberID(prefix)
	if j.version >= 4 && j.instance == nil {
		g.addPendingLocked(id, j.session)
		return joinError(j.version, id, kerr.MemberIDRequired.Code), nil, nil
	}
	m, w := g.addMemberLocked(id, j)
	return nil, m, w
}

func (g *group) joinKnownLocked(j *joinArgs) (*kmsg.JoinGroupResponse, *member, *joinWaiter) {
	id := j.req.MemberID
	if g.fencedLocked(j.instance, id) {
		return j.fail(kerr.FencedInstanceID.Code)
	}
	if p := g.pending[id]; p != nil {
		g.stopPendingLocked(p)
		m, w := g.addMemberLocked(id, j)
		return nil, m, w
	}
	m := g.members[id]
	if m == nil {
		return j.fail(kerr.UnknownMemberID.Code)
	}
	same := m.protocolType == j.req.ProtocolType && sameProtocols(m.protocols, j.req.Protocols)
	switch g.state {
	case stateCompleting:
		if same { // a retried join: hand back the result it missed
			g.restartSessionLocked(m)
			return g.joinResponseLocked(j.version, id), nil, nil
		}
	case stateStable:
		if same && id != g.leader {
			g.restartSessionLocked(m)
			return g.joinResponseLocked(j.version, id), nil, nil
		}
	}
	// Preparing, or a change (or the leader rejoining) after the join.
	w := g.updateMemberLocked(m, j)
	if g.state == statePreparing {
		g.tryCompleteJoinLocked()
	} else {
		g.prepareRebalanceLocked("member rejoined: " + id)
	}
	return nil, m, w
}

// updateMemberLocked records a member's new join and makes it wait.
func (g *group) updateMemberLocked(m *member, j *joinArgs) *joinWaiter {
	m.protocolType = j.req.ProtocolType
	m.protocols = j.req.Protocols
	m.sessionTimeout, m.rebalanceTimeout = j.session, j.rebalance
	m.clientID, m.clientHost = j.client.id, j.client.host
	// A second JoinGroup from a member already waiting (a client retrying
	// on a new connection) supersedes the first.
	g.replyJoinLocked(m, func(v int16) *kmsg.JoinGroupResponse { return joinError(v, m.id, kerr.RebalanceInProgress.Code) })
	w := &joinWaiter{version: j.version, ch: make(chan *kmsg.JoinGroupResponse, 1)}
	m.join = w
	g.stopSessionLocked(m)
	return w
}

func (g *group) addMemberLocked(id string, j *joinArgs) (*member, *joinWaiter) {
	g.seq++
	m := &member{id: id, instanceID: j.instance, order: g.seq, isNew: true}
	if len(g.members) == 0 {
		g.protocolType = j.req.ProtocolType
	}
	g.members[id] = m
	if g.leader == "" {
		g.leader = id
	}
	if j.instance != nil {
		g.static[*j.instance] = id
	}
	w := g.updateMemberLocked(m, j)
	g.c.log.Info("group member added", "group", g.name, "member", id, "client", j.client.id, "static", j.instance != nil)
	if g.initialDelay {
		g.newMember = true
	}
	if g.state == statePreparing {
		g.tryCompleteJoinLocked()
	} else {
		g.prepareRebalanceLocked("member joined: " + id)
	}
	return m, w
}

func (g *group) addPendingLocked(id string, session time.Duration) {
	p := &pendingMember{id: id}
	tok := p.token
	p.timer = time.AfterFunc(session, func() {
		g.c.mu.Lock()
		defer g.c.mu.Unlock()
		if !g.liveLocked() || g.pending[id] != p || p.token != tok {
			return
		}
		g.c.log.Info("pending group member dropped: it did not rejoin with its member ID", "group", g.name, "member", id)
		delete(g.pending, id)
		g.tryCompleteJoinLocked()
		g.forgetIfUnformedLocked()
	})
	g.pending[id] = p
}

// replaceStaticLocked lets a static member that restarted (empty member ID,
// known instance ID) take over its old incarnation under a new member ID.
func (g *group) replaceStaticLocked(old *member, j *joinArgs) (*kmsg.JoinGroupResponse, *member, *joinWaiter) {
	id := newMemberID(*j.instance)
	m := &member{
		id:         id,
		instanceID: j.instance,
		assignment: old.assignment,
		order:      old.order,
		isNew:      old.isNew,
		synced:     old.synced,
	}
	unchanged := old.protocolType == j.req.ProtocolType && sameProtocols(old.protocols, j.req.Protocols)
	g.replyJoinLocked(old, func(v int16) *kmsg.JoinGroupResponse { return joinError(v, old.id, kerr.FencedInstanceID.Code) })
	g.replySyncLocked(old, func(v int16) *kmsg.SyncGroupResponse { return syncError(v, kerr.FencedInstanceID.Code) })
	g.stopSessionLocked(old)
	delete(g.members, old.id)
	g.members[id] = m
	g.static[*j.instance] = id
	if g.leader == old.id {
		g.leader = id
	}
	g.c.log.Info("static group member replaced", "group", g.name, "instance", *j.instance, "old_member", old.id, "member", id)
	if g.state == stateStable && unchanged {
		m.protocolType, m.protocols = j.req.ProtocolType, j.req.Protocols
		m.sessionTimeout, m.rebalanceTimeout = j.session, j.rebalance
		m.clientID, m.clientHost = j.client.id, j.client.host
		g.restartSessionLocked(m)
		resp := g.joinResponseLocked(j.version, id)
		// KIP-814: the leader must not compute a new assignment.
		resp.SkipAssignment = j.version >= 9 && id == g.leader
		return resp, nil, nil
	}
	w := g.updateMemberLocked(m, j)
	if g.state == statePreparing {
		g.tryCompleteJoinLocked()
	} else {
		g.prepareRebalanceLocked("static member rejoined with changes: " + *j.instance)
	}
	return nil, m, w
}

// supportsLocked reports whether a join with this protocol type and these
// protocols fits the group: the same type, and at least one protocol every
// other member supports.
func (g *group) supportsLocked(memberID, protocolType string, protocols []kmsg.JoinGroupRequestProtocol) bool {
	others := 0
	for _, m := range g.members {
		if m.id != memberID {
			others++
		}
	}
	if others == 0 {
		return true
	}
	if protocolType != g.protocolType {
		return false
	}
	for _, p := range protocols {
		if g.allSupportLocked(p.Name, memberID) {
			return true
		}
	}
	return false
}

// allSupportLocked reports whether every member but except supports name.
func (g *group) allSupportLocked(name, except string) bool {
	for _, m := range g.members {
		if m.id == except {
			continue
		}
		if !slices.ContainsFunc(m.protocols, func(p kmsg.JoinGroupRequestProtocol) bool { return p.Name == name }) {
			return false
		}
	}
	return true
}

// selectProtocolLocked chooses the generation's protocol by vote: each
// member votes for the first protocol in its list that all members
// support; the most votes win, ties going to the leader's preference.
func (g *group) selectProtocolLocked() string {
	leader := g.members[g.leader]
	var candidates []string
	for _, p := range leader.protocols {
		if g.allSupportLocked(p.Name, "") {
			candidates = append(candidates, p.Name)
		}
	}
	if len(candidates) == 0 { // cannot happen: every join was checked by supportsLocked
		return leader.protocols[0].Name
	}
	votes := make(map[string]int)
	for _, m := range g.members {
		for _, p := range m.protocols {
			if slices.Contains(candidates, p.Name) {
				votes[p.Name]++
				break
			}
		}
	}
	best := candidates[0]
	for _, name := range candidates[1:] {
		if votes[name] > votes[best] {
			best = name
		}
	}
	return best
}

// prepareRebalanceLocked starts a join phase: syncs waiting for a leader
// that will not come are told REBALANCE_IN_PROGRESS, and the deadline is set.
func (g *group) prepareRebalanceLocked(reason string) {
	if g.state == stateCompleting {
		for _, m := range g.members {
			if m.sync != nil {
				g.replySyncLocked(m, func(v int16) *kmsg.SyncGroupResponse { return syncError(v, kerr.RebalanceInProgress.Code) })
				g.restartSessionLocked(m)
			}
		}
	}
	g.stopSyncTimerLocked()
	g.stopJoinTimerLocked()
	wasEmpty := g.state == stateEmpty
	g.state = statePreparing
	timeout := g.rebalanceTimeoutLocked()
	g.c.log.Info("group rebalance started", "group", g.name, "generation", g.generation, "reason", reason, "rebalance_timeout", timeout)
	if delay := g.c.cfg.initialDelay; wasEmpty && delay > 0 {
		d := min(delay, timeout)
		g.initialDelay, g.initialLeft, g.newMember = true, timeout-d, false
		g.armJoinTimerLocked(d)
		return
	}
	g.armJoinTimerLocked(timeout)
	g.tryCompleteJoinLocked()
}

func (g *group) armJoinTimerLocked(d time.Duration) {
	g.joinToken++
	tok := g.joinToken
	g.joinTimer = time.AfterFunc(d, func() {
		g.c.mu.Lock()
		defer g.c.mu.Unlock()
		if !g.liveLocked() || g.joinToken != tok || g.state != statePreparing {
			return
		}
		if g.initialDelay && g.newMember && g.initialLeft > 0 {
			d := min(g.c.cfg.initialDelay, g.initialLeft)
			g.initialLeft -= d
			g.newMember = false
			g.armJoinTimerLocked(d)
			return
		}
		g.completeJoinLocked()
	})
}

// tryCompleteJoinLocked completes the join phase once every member has
// rejoined and no member told MEMBER_ID_REQUIRED is still expected.
func (g *group) tryCompleteJoinLocked() {
	if g.state != statePreparing || g.initialDelay || len(g.pending) > 0 {
		return
	}
	for _, m := range g.members {
		if m.join == nil {
			return
		}
	}
	g.completeJoinLocked()
}

// completeJoinLocked ends the join phase: members that did not rejoin are
// removed, the generation advances and every waiting join is answered.
func (g *group) completeJoinLocked() {
	g.stopJoinTimerLocked()
	for _, m := range g.members {
		if m.join == nil {
			g.c.log.Info("group member removed", "group", g.name, "member", m.id, "reason", "did not rejoin within the rebalance timeout")
			g.dropMemberLocked(m, kerr.UnknownMemberID.Code)
		}
	}
	g.generation++
	if len(g.members) == 0 {
		g.state, g.protocol, g.leader = stateEmpty, "", ""
		g.c.log.Info("group is empty", "group", g.name, "generation", g.generation)
		return
	}
	g.protocol = g.selectProtocolLocked()
	g.state = stateCompleting
	for _, m := range g.members {
		m.isNew, m.synced, m.assignment = false, false, nil
		g.replyJoinLocked(m, func(v int16) *kmsg.JoinGroupResponse { return g.joinResponseLocked(v, m.id) })
		g.restartSessionLocked(m)
	}
	g.c.log.Info("group join completed", "group", g.name, "generation", g.generation, "protocol", g.protocol, "leader", g.leader, "members", len(g.members))

	g.syncToken++
	tok := g.syncToken
	g.syncTimer = time.AfterFunc(g.rebalanceTimeoutLocked(), func() {
		g.c.mu.Lock()
		defer g.c.mu.Unlock()
		if !g.liveLocked() || g.syncToken != tok {
			return
		}
		g.syncDeadlineLocked()
	})
}

// syncDeadlineLocked removes the members that joined the current
// generation but never sent SyncGroup.
func (g *group) syncDeadlineLocked() {
	if g.state != stateCompleting && g.state != stateStable {
		return
	}
	removed := false
	for _, m := range g.members {
		if !m.synced {
			g.c.log.Info("group member removed", "group", g.name, "member", m.id, "reason", "no SyncGroup within the rebalance timeout")
			g.dropMemberLocked(m, kerr.UnknownMemberID.Code)
			removed = true
		}
	}
	if removed {
		g.prepareRebalanceLocked("members did not sync")
	}
}

// joinResponseLocked is member id's answer for the current generation.
func (g *group) joinResponseLocked(version int16, id string) *kmsg.JoinGroupResponse {
	r := kmsg.NewPtrJoinGroupResponse()
	r.Version = version
	r.Generation = g.generation
	if version >= 7 {
		r.ProtocolType = strPtr(g.protocolType)
	}
	r.Protocol = strPtr(g.protocol)
	r.LeaderID = g.leader
	r.MemberID = id
	if id != g.leader {
		return r
	}
	ms := make([]*member, 0, len(g.members))
	for _, m := range g.members {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b *member) int { return cmp.Compare(a.order, b.order) })
	for _, m := range ms {
		jm := kmsg.NewJoinGroupResponseMember()
		jm.MemberID = m.id
		if version >= 5 {
			jm.InstanceID = m.instanceID
		}
		for _, p := range m.protocols {
			if p.Name == g.protocol {
				jm.ProtocolMetadata = p.Metadata
				break
			}
		}
		r.Members = append(r.Members, jm)
	}
	return r
}

func joinError(version int16, memberID string, code int16) *kmsg.JoinGroupResponse {
	r := kmsg.NewPtrJoinGroupResponse()
	r.Version = version
	r.ErrorCode = code
	r.Generation = -1
	r.MemberID = memberID
	return r
}

func sameProtocols(a, b []kmsg.JoinGroupRequestProtocol) bool {
	return slices.EqualFunc(a, b, func(x, y kmsg.JoinGroupRequestProtocol) bool {
		return x.Name == y.Name && bytes.Equal(x.Metadata, y.Metadata)
	})
}
