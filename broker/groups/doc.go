// Package groups is the classic Kafka consumer-group coordinator of
// `ferry serve`: it handles JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
// DescribeGroups, ListGroups and DeleteGroups the way Kafka's
// GroupCoordinator does, and tells the offset layer whether a commit comes
// from a current member (CheckMember). It knows nothing about the network
// and stores no offsets: requests and responses are franz-go's kmsg types,
// and the request version passed with each call decides which rules apply.
//
// # State machine
//
// Each group is in one of five states:
//
//	           first join            all members rejoined, or
//	Empty ───────────────► Preparing ─── the rebalance timeout ───► Completing
//	  ▲                    Rebalance ◄──────────────────────────── Rebalance
//	  │                      ▲   │       a member joins, leaves       │
//	  │ no member rejoined   │   │       or expires                   │ the leader's
//	  └──────────────────────┼───┘                                    │ SyncGroup
//	                         │   a member joins, leaves, expires,     ▼
//	                         └──── or the leader rejoins ────────── Stable
//
//	Dead: a deleted group (DeleteGroups); it is forgotten at once, and
//	DescribeGroups reports unknown groups as Dead.
//
// PreparingRebalance waits until every known member has sent JoinGroup
// again (heartbeats answer REBALANCE_IN_PROGRESS, which is how members learn
// to rejoin), or until the rebalance timeout — the largest of the members'
// rebalance timeouts, fixed when the rebalance starts — ends. Members that
// did not rejoin by then are removed. Completing the join bumps the
// generation, chooses the protocol by vote (each member votes for the first
// protocol in its own list that every member supports; ties go to the
// leader's preference), and answers every waiting JoinGroup: the leader gets
// every member's metadata for the chosen protocol, followers get none.
//
// CompletingRebalance waits for the leader's SyncGroup; followers' SyncGroup
// calls block until it arrives, and then every member gets its assignment
// (empty bytes if the leader gave it none) and the group is Stable. Members
// that have not sent SyncGroup within the rebalance timeout after the join
// completed are removed, so a leader that never syncs cannot wedge the group.
//
// A member's session timer runs while it is not blocked in JoinGroup or
// SyncGroup; each accepted heartbeat, join or sync restarts it. When it ends
// the member is removed and, if others remain, a rebalance starts. A group
// whose last member leaves or expires becomes Empty (keeping its
// generation); an Empty group that never formed a generation is forgotten.
//
// # Member IDs
//
// JoinGroup v4+ with an empty member ID from a dynamic member answers
// MEMBER_ID_REQUIRED with a generated ID (clientID-uuid) and remembers it as
// pending for one session timeout; the member must rejoin with it. Older
// versions, and static members, get their ID and join at once. The client ID
// and host come from the context (ClientContext), since they travel in the
// request header, not in the request.
//
// # Static membership
//
// JoinGroup v5+ with a group instance ID makes a static member. A static
// member that rejoins with an empty member ID replaces its old incarnation
// under a new member ID; if the group is Stable and the member's protocols
// and metadata are unchanged, no rebalance happens (the leader gets
// SkipAssignment on v9+, KIP-814), otherwise one starts. The old member ID is
// fenced: its blocked calls, and any later call naming the instance ID with
// the old member ID, get FENCED_INSTANCE_ID. Unlike Kafka, a static member
// that does not rejoin within a rebalance is removed like a dynamic one.
//
// # Concurrency
//
// One mutex guards the whole coordinator; nothing slow happens while it is
// held. Timers are time.AfterFunc timers, each checked against a token when it
// fires so a stopped or superseded timer does nothing, which also lets tests
// run under testing/synctest. Close answers every blocked call with
// COORDINATOR_NOT_AVAILABLE and stops every timer.
package groups
