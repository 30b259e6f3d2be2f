package groups

import (
	"cmp"
	"math"
	"slices"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Heartbeat handles Heartbeat: it restarts the member's session timer and
// answers REBALANCE_IN_PROGRESS while a rebalance is being prepared (so the
// member rejoins), UNKNOWN_MEMBER_ID for a member the group does not have,
// ILLEGAL_GENERATION for another generation and, v3+, FENCED_INSTANCE_ID for
// an instance ID now held by another member ID.
func (c *Coordinator) Heartbeat(version int16, req *kmsg.HeartbeatRequest) *kmsg.HeartbeatResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := kmsg.NewPtrHeartbeatResponse()
	r.Version = version
	var instance *string
	if version >= 3 {
		instance = req.InstanceID
	}
	g, m, code := c.memberLocked(req.Group, req.MemberID, instance, req.Generation)
	if code != 0 {
		r.ErrorCode = code
		return r
	}
	g.restartSessionLocked(m)
	if g.state == statePreparing {
		r.ErrorCode = kerr.RebalanceInProgress.Code
	}
	return r
}

// Leave handles LeaveGroup. Below v3 it removes the one member named; from
// v3 on a batch of members, each named by member ID, by instance ID alone
// (static members), or both, with an error code per member. Each removal
// starts a rebalance for the members left; when the last leaves the group
// is Empty.
func (c *Coordinator) Leave(version int16, req *kmsg.LeaveGroupRequest) *kmsg.LeaveGroupResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := kmsg.NewPtrLeaveGroupResponse()
	r.Version = version
	switch {
	case c.closed:
		r.ErrorCode = kerr.CoordinatorNotAvailable.Code
		return r
	case req.Group == "":
		r.ErrorCode = kerr.InvalidGroupID.Code
		return r
	}
	g := c.groups[req.Group]
	if version < 3 {
		r.ErrorCode = g.leaveOneLocked(req.MemberID, nil)
	} else {
		for _, lm := range req.Members {
			rm := kmsg.NewLeaveGroupResponseMember()
			rm.MemberID, rm.InstanceID = lm.MemberID, lm.InstanceID
			rm.ErrorCode = g.leaveOneLocked(lm.MemberID, lm.InstanceID)
			r.Members = append(r.Members, rm)
		}
	}
	if g != nil {
		g.forgetIfUnformedLocked()
	}
	return r
}

// leaveOneLocked removes one member; g may be nil (unknown group).
func (g *group) leaveOneLocked(memberID string, instance *string) int16 {
	if g == nil {
		return kerr.UnknownMemberID.Code
	}
	if memberID == "" && instance != nil {
		id, ok := g.static[*instance]
		if !ok {
			return kerr.UnknownMemberID.Code
		}
		memberID = id
	} else if g.fencedLocked(instance, memberID) {
		return kerr.FencedInstanceID.Code
	}
	if p := g.pending[memberID]; p != nil {
		g.stopPendingLocked(p)
		g.tryCompleteJoinLocked()
		return 0
	}
	m := g.members[memberID]
	if m == nil {
		return kerr.UnknownMemberID.Code
	}
	g.removeMemberLocked(m, "left the group")
	return 0
}

// Describe handles DescribeGroups. A Stable group shows its protocol and
// each member's metadata and assignment; other states show members only.
// An unknown group is reported as Dead without error below v6 (as Kafka),
// and with GROUP_ID_NOT_FOUND from v6 on. AuthorizedOperations is always
// "not provided" (math.MinInt32): the coordinator knows nothing of ACLs.
func (c *Coordinator) Describe(version int16, req *kmsg.DescribeGroupsRequest) *kmsg.DescribeGroupsResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := kmsg.NewPtrDescribeGroupsResponse()
	r.Version = version
	for _, name := range req.Groups {
		dg := kmsg.NewDescribeGroupsResponseGroup()
		dg.Group = name
		dg.AuthorizedOperations = math.MinInt32
		g := c.groups[name]
		switch {
		case c.closed:
			dg.ErrorCode = kerr.CoordinatorNotAvailable.Code
		case name == "":
			dg.ErrorCode = kerr.InvalidGroupID.Code
		case g == nil:
			dg.State = stateDead.String()
			if version >= 6 {
				dg.ErrorCode = kerr.GroupIDNotFound.Code
				dg.ErrorMessage = strPtr("group " + name + " not found")
			}
		default:
			g.describeLocked(version, &dg)
		}
		r.Groups = append(r.Groups, dg)
	}
	return r
}

func (g *group) describeLocked(version int16, dg *kmsg.DescribeGroupsResponseGroup) {
	dg.State = g.state.String()
	dg.ProtocolType = g.protocolType
	stable := g.state == stateStable
	if stable {
		dg.Protocol = g.protocol
	}
	for _, m := range g.sortedMembersLocked() {
		dm := kmsg.NewDescribeGroupsResponseGroupMember()
		dm.MemberID = m.id
		if version >= 4 {
			dm.InstanceID = m.instanceID
		}
		dm.ClientID, dm.ClientHost = m.clientID, m.clientHost
		if stable {
			for _, p := range m.protocols {
				if p.Name == g.protocol {
					dm.ProtocolMetadata = p.Metadata
				}
			}
			dm.MemberAssignment = m.assignment
		}
		dg.Members = append(dg.Members, dm)
	}
}

func (g *group) sortedMembersLocked() []*member {
	ms := make([]*member, 0, len(g.members))
	for _, m := range g.members {
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b *member) int { return cmp.Compare(a.order, b.order) })
	return ms
}

// List handles ListGroups, sorted by name. From v4 on StatesFilter keeps
// only groups in the named states, and from v5 on TypesFilter only groups
// of the named types (all these groups are "classic"); both filters are
// case-insensitive and empty means all. Only groups that have had members
// are known here: groups that exist only through committed offsets are the
// offset store's to add.
func (c *Coordinator) List(version int16, req *kmsg.ListGroupsRequest) *kmsg.ListGroupsResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := kmsg.NewPtrListGroupsResponse()
	r.Version = version
	if c.closed {
		r.ErrorCode = kerr.CoordinatorNotAvailable.Code
		return r
	}
	matches := func(filter []string, v string) bool {
		return len(filter) == 0 || slices.ContainsFunc(filter, func(f string) bool { return strings.EqualFold(f, v) })
	}
	for _, g := range c.groups {
		if version >= 4 && !matches(req.StatesFilter, g.state.String()) ||
			version >= 5 && !matches(req.TypesFilter, "classic") {
			continue
		}
		lg := kmsg.NewListGroupsResponseGroup()
		lg.Group, lg.ProtocolType = g.name, g.protocolType
		if version >= 4 {
			lg.GroupState = g.state.String()
		}
		if version >= 5 {
			lg.GroupType = "classic"
		}
		r.Groups = append(r.Groups, lg)
	}
	slices.SortFunc(r.Groups, func(a, b kmsg.ListGroupsResponseGroup) int { return strings.Compare(a.Group, b.Group) })
	return r
}

// SimpleCommit is what CheckMember returns for a "simple" commit — one
// with generation -1 and no member ID, from a client that assigns itself
// partitions and uses the group only to store offsets — when the group has
// no members (or is unknown). It is not a Kafka error code: the caller
// stores the commit. When the group has members such a commit gets
// UNKNOWN_MEMBER_ID instead, as in Kafka.
const SimpleCommit int16 = math.MinInt16

// CheckMember says whether an OffsetCommit (or a TxnOffsetCommit that names
// a member) may be stored: 0 for a current member of the current
// generation, SimpleCommit for a simple commit to a group without members,
// otherwise the Kafka error code for the whole request:
// COORDINATOR_NOT_AVAILABLE after Close, INVALID_GROUP_ID for an empty
// group ID, UNKNOWN_MEMBER_ID for a member the group does not have,
// ILLEGAL_GENERATION for another generation (or a generation for an unknown
// group), REBALANCE_IN_PROGRESS while the group waits for its leader's
// assignment (commits during PreparingRebalance are allowed, so members can
// commit before they rejoin). An accepted member commit counts as a
// heartbeat.
//
// A TxnOffsetCommit without member information (v0-v2, or generation -1
// and no member) is allowed by Kafka whatever the group's state: callers
// should not ask CheckMember about it. The instance ID is not checked: a
// fenced static member's old member ID is no longer a member, so it gets
// UNKNOWN_MEMBER_ID rather than FENCED_INSTANCE_ID.
func (c *Coordinator) CheckMember(groupID, memberID string, generation int32) int16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return kerr.CoordinatorNotAvailable.Code
	case groupID == "":
		return kerr.InvalidGroupID.Code
	}
	simple := generation < 0 && memberID == ""
	g := c.groups[groupID]
	switch {
	case g == nil && simple:
		return SimpleCommit
	case g == nil && generation >= 0:
		return kerr.IllegalGeneration.Code
	case g == nil:
		return kerr.UnknownMemberID.Code
	case simple && len(g.members) == 0:
		return SimpleCommit
	case simple:
		return kerr.UnknownMemberID.Code
	}
	m := g.members[memberID]
	switch {
	case m == nil:
		return kerr.UnknownMemberID.Code
	case generation != g.generation:
		return kerr.IllegalGeneration.Code
	case g.state == stateCompleting:
		return kerr.RebalanceInProgress.Code
	}
	g.restartSessionLocked(m)
	return 0
}

// Active reports whether the group has members.
func (c *Coordinator) Active(groupID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groups[groupID]
	return g != nil && len(g.members) > 0
}

// Delete handles one group of DeleteGroups: it forgets an Empty group and
// returns 0, NON_EMPTY_GROUP if the group has members, GROUP_ID_NOT_FOUND
// if the coordinator does not know it (the caller may still hold offsets
// for it), INVALID_GROUP_ID for an empty name, COORDINATOR_NOT_AVAILABLE
// after Close. Members told MEMBER_ID_REQUIRED that have not rejoined do not
// keep a group alive; their later join gets UNKNOWN_MEMBER_ID.
func (c *Coordinator) Delete(groupID string) int16 {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return kerr.CoordinatorNotAvailable.Code
	case groupID == "":
		return kerr.InvalidGroupID.Code
	}
	g := c.groups[groupID]
	switch {
	case g == nil:
		return kerr.GroupIDNotFound.Code
	case g.state != stateEmpty:
		return kerr.NonEmptyGroup.Code
	}
	g.shutdownLocked(kerr.UnknownMemberID.Code)
	delete(c.groups, groupID)
	c.log.Info("group deleted", "group", groupID)
	return 0
}
