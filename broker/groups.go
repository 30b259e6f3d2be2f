package broker

import (
	"slices"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The group requests are the coordinator's (package groups); offsets are
// the log's (offsets.go). Each needs read on its group.

var groupDenied = kerr.GroupAuthorizationFailed.Code

func handleJoinGroup(r *request) kmsg.Response {
	req := r.body.(*kmsg.JoinGroupRequest)
	if !r.may("group", req.Group, "read") {
		resp := kmsg.NewPtrJoinGroupResponse()
		resp.ErrorCode, resp.Generation, resp.MemberID = groupDenied, -1, req.MemberID
		return resp
	}
	return r.c.s.groups.Join(r.ctx, r.version, req)
}

func handleSyncGroup(r *request) kmsg.Response {
	req := r.body.(*kmsg.SyncGroupRequest)
	if !r.may("group", req.Group, "read") {
		resp := kmsg.NewPtrSyncGroupResponse()
		resp.ErrorCode = groupDenied
		return resp
	}
	return r.c.s.groups.Sync(r.ctx, r.version, req)
}

func handleHeartbeat(r *request) kmsg.Response {
	req := r.body.(*kmsg.HeartbeatRequest)
	if !r.may("group", req.Group, "read") {
		resp := kmsg.NewPtrHeartbeatResponse()
		resp.ErrorCode = groupDenied
		return resp
	}
	return r.c.s.groups.Heartbeat(r.version, req)
}

func handleLeaveGroup(r *request) kmsg.Response {
	req := r.body.(*kmsg.LeaveGroupRequest)
	if !r.may("group", req.Group, "read") {
		resp := kmsg.NewPtrLeaveGroupResponse()
		resp.ErrorCode = groupDenied
		return resp
	}
	return r.c.s.groups.Leave(r.version, req)
}

func handleDescribeGroups(r *request) kmsg.Response {
	req := r.body.(*kmsg.DescribeGroupsRequest)
	var allowed []string
	for _, g := range req.Groups {
		if r.may("group", g, "describe") {
			allowed = append(allowed, g)
		}
	}
	sub := *req
	sub.Groups = allowed
	described := r.c.s.groups.Describe(r.version, &sub)
	resp := kmsg.NewPtrDescribeGroupsResponse()
	byName := map[string]kmsg.DescribeGroupsResponseGroup{}
	for _, g := range described.Groups {
		byName[g.Group] = g
	}
	for _, g := range req.Groups {
		if d, ok := byName[g]; ok {
			resp.Groups = append(resp.Groups, d)
			continue
		}
		d := kmsg.NewDescribeGroupsResponseGroup()
		d.Group, d.ErrorCode = g, groupDenied
		resp.Groups = append(resp.Groups, d)
	}
	return resp
}

// handleListGroups lists the groups the principal may describe: those
// the coordinator knows and, as Kafka does, those that exist only through
// their committed offsets (their members gone before the broker started,
// or never any), as Empty classic groups.
func handleListGroups(r *request) kmsg.Response {
	req := r.body.(*kmsg.ListGroupsRequest)
	resp := r.c.s.groups.List(r.version, req)
	if resp.ErrorCode != 0 {
		return resp
	}
	listed := map[string]bool{}
	for _, g := range resp.Groups {
		listed[g.Group] = true
	}
	matches := func(filter []string, v string) bool {
		return len(filter) == 0 || slices.ContainsFunc(filter, func(f string) bool { return strings.EqualFold(f, v) })
	}
	if (r.version < 4 || matches(req.StatesFilter, "Empty")) && (r.version < 5 || matches(req.TypesFilter, "classic")) {
		for g := range r.c.s.log.Groups() {
			if listed[g] {
				continue
			}
			lg := kmsg.NewListGroupsResponseGroup()
			lg.Group = g
			if r.version >= 4 {
				lg.GroupState = "Empty"
			}
			if r.version >= 5 {
				lg.GroupType = "classic"
			}
			resp.Groups = append(resp.Groups, lg)
		}
		slices.SortFunc(resp.Groups, func(a, b kmsg.ListGroupsResponseGroup) int { return strings.Compare(a.Group, b.Group) })
	}
	kept := resp.Groups[:0]
	for _, g := range resp.Groups {
		if r.may("group", g.Group, "describe") {
			kept = append(kept, g)
		}
	}
	resp.Groups = kept
	return resp
}
