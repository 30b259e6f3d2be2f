package broker

import (
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The group requests are the coordinator's (package groups); offsets are
// the log's (offsets.go).

func handleJoinGroup(r *request) kmsg.Response {
	return r.c.s.groups.Join(r.ctx, r.version, r.body.(*kmsg.JoinGroupRequest))
}

func handleSyncGroup(r *request) kmsg.Response {
	return r.c.s.groups.Sync(r.ctx, r.version, r.body.(*kmsg.SyncGroupRequest))
}

func handleHeartbeat(r *request) kmsg.Response {
	return r.c.s.groups.Heartbeat(r.version, r.body.(*kmsg.HeartbeatRequest))
}

func handleLeaveGroup(r *request) kmsg.Response {
	return r.c.s.groups.Leave(r.version, r.body.(*kmsg.LeaveGroupRequest))
}

func handleDescribeGroups(r *request) kmsg.Response {
	return r.c.s.groups.Describe(r.version, r.body.(*kmsg.DescribeGroupsRequest))
}

func handleListGroups(r *request) kmsg.Response {
	return r.c.s.groups.List(r.version, r.body.(*kmsg.ListGroupsRequest))
}
