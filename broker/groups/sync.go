package groups

import (
	"context"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Sync handles SyncGroup. In CompletingRebalance the leader's call carries
// every member's assignment: it makes the group Stable and answers every
// waiting member, each with its own assignment (empty bytes if the leader
// gave it none; assignments for non-members are ignored). A follower's call
// blocks until then. In Stable the member's current assignment comes back
// at once. A sync for another generation gets ILLEGAL_GENERATION, one during
// PreparingRebalance REBALANCE_IN_PROGRESS, and on v5+ a protocol type or
// name that is not the group's INCONSISTENT_GROUP_PROTOCOL.
//
// If ctx ends first, Sync returns REBALANCE_IN_PROGRESS; the member stays,
// with its session running again.
func (c *Coordinator) Sync(ctx context.Context, version int16, req *kmsg.SyncGroupRequest) *kmsg.SyncGroupResponse {
	c.mu.Lock()
	resp, g, m, w := c.syncLocked(version, req)
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
	case r := <-w.ch:
		return r
	default:
	}
	m.sync = nil // every answer is sent under mu: m.sync is still w
	g.restartSessionLocked(m)
	return syncError(version, kerr.RebalanceInProgress.Code)
}

func (c *Coordinator) syncLocked(version int16, req *kmsg.SyncGroupRequest) (*kmsg.SyncGroupResponse, *group, *member, *syncWaiter) {
	fail := func(code int16) (*kmsg.SyncGroupResponse, *group, *member, *syncWaiter) {
		return syncError(version, code), nil, nil, nil
	}
	var instance *string
	if version >= 3 {
		instance = req.InstanceID
	}
	g, m, code := c.memberLocked(req.Group, req.MemberID, instance, req.Generation)
	if code != 0 {
		return fail(code)
	}
	if version >= 5 {
		if req.ProtocolType != nil && *req.ProtocolType != g.protocolType ||
			req.Protocol != nil && *req.Protocol != g.protocol {
			return fail(kerr.InconsistentGroupProtocol.Code)
		}
	}
	switch g.state {
	case statePreparing:
		return fail(kerr.RebalanceInProgress.Code)
	case stateStable:
		m.synced = true
		g.restartSessionLocked(m)
		return g.syncResponseLocked(version, m), nil, nil, nil
	}
	// CompletingRebalance.
	m.synced = true
	g.replySyncLocked(m, func(v int16) *kmsg.SyncGroupResponse { return syncError(v, kerr.RebalanceInProgress.Code) })
	w := &syncWaiter{version: version, ch: make(chan *kmsg.SyncGroupResponse, 1)}
	m.sync = w
	g.stopSessionLocked(m)
	if m.id == g.leader {
		given := make(map[string][]byte, len(req.GroupAssignment))
		for _, a := range req.GroupAssignment {
			given[a.MemberID] = a.MemberAssignment
		}
		for _, o := range g.members {
			o.assignment = given[o.id]
			if o.assignment == nil {
				o.assignment = []byte{}
			}
		}
		g.state = stateStable
		g.c.log.Info("group stable", "group", g.name, "generation", g.generation, "members", len(g.members))
		for _, o := range g.members {
			if o.sync != nil {
				g.replySyncLocked(o, func(v int16) *kmsg.SyncGroupResponse { return g.syncResponseLocked(v, o) })
				g.restartSessionLocked(o)
			}
		}
	}
	return nil, g, m, w
}

// memberLocked finds a current member the way Heartbeat, Sync and offset
// commits need it, or says why not.
func (c *Coordinator) memberLocked(groupID, memberID string, instance *string, generation int32) (*group, *member, int16) {
	if c.closed {
		return nil, nil, kerr.CoordinatorNotAvailable.Code
	}
	if groupID == "" {
		return nil, nil, kerr.InvalidGroupID.Code
	}
	g := c.groups[groupID]
	if g == nil {
		return nil, nil, kerr.UnknownMemberID.Code
	}
	if g.fencedLocked(instance, memberID) {
		return nil, nil, kerr.FencedInstanceID.Code
	}
	m := g.members[memberID]
	if m == nil {
		return nil, nil, kerr.UnknownMemberID.Code
	}
	if generation != g.generation {
		return nil, nil, kerr.IllegalGeneration.Code
	}
	return g, m, 0
}

func (g *group) syncResponseLocked(version int16, m *member) *kmsg.SyncGroupResponse {
	r := kmsg.NewPtrSyncGroupResponse()
	r.Version = version
	r.MemberAssignment = m.assignment
	if r.MemberAssignment == nil {
		r.MemberAssignment = []byte{}
	}
	if version >= 5 {
		r.ProtocolType = strPtr(g.protocolType)
		r.Protocol = strPtr(g.protocol)
	}
	return r
}

func syncError(version int16, code int16) *kmsg.SyncGroupResponse {
	r := kmsg.NewPtrSyncGroupResponse()
	r.Version = version
	r.ErrorCode = code
	r.MemberAssignment = []byte{}
	return r
}
