package broker

import (
	"maps"
	"slices"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// api is one served request kind: the versions served and its handler,
// which calls reply once with the answer (nil: none, for a produce with
// acks 0).
type api struct {
	min, max int16
	// inline handlers run in the connection's reader, before the next
	// request is read (they must not block; a produce queues its appends
	// there so they are in the order the client sent them).
	inline bool
	handle func(r *request, reply func(kmsg.Response))
}

const apiVersionsKey = 18

// apis are the requests served, with the versions: from those Kafka 4
// still serves (KIP-896) to the last before topic IDs replaced topic
// names in the request (Produce v13, Fetch v13), which clients negotiate
// down from.
var apis map[int16]api

func init() {
	sync := func(h func(r *request) kmsg.Response) func(*request, func(kmsg.Response)) {
		return func(r *request, reply func(kmsg.Response)) { reply(h(r)) }
	}
	apis = map[int16]api{
		apiVersionsKey: {min: 0, max: 3, handle: sync(handleAPIVersions)},
		17:             {min: 1, max: 1, inline: true, handle: handleSASLHandshake},
		36:             {min: 0, max: 2, inline: true, handle: handleSASLAuthenticate},
		3:              {min: 1, max: 12, handle: sync(handleMetadata)},
		19:             {min: 2, max: 7, handle: sync(handleCreateTopics)},
		20:             {min: 1, max: 6, handle: sync(handleDeleteTopics)},
		0:              {min: 3, max: 12, inline: true, handle: handleProduce},
		1:              {min: 4, max: 12, handle: sync(handleFetch)},
		2:              {min: 1, max: 6, handle: sync(handleListOffsets)},
		10:             {min: 0, max: 4, handle: sync(handleFindCoordinator)},
		22:             {min: 0, max: 4, handle: sync(handleInitProducerID)},
		8:              {min: 2, max: 8, handle: sync(handleOffsetCommit)},
		9:              {min: 1, max: 8, handle: sync(handleOffsetFetch)},
		11:             {min: 0, max: 9, handle: sync(handleJoinGroup)},
		14:             {min: 0, max: 5, handle: sync(handleSyncGroup)},
		12:             {min: 0, max: 4, handle: sync(handleHeartbeat)},
		13:             {min: 0, max: 5, handle: sync(handleLeaveGroup)},
		15:             {min: 0, max: 5, handle: sync(handleDescribeGroups)},
		16:             {min: 0, max: 4, handle: sync(handleListGroups)},
		32:             {min: 0, max: 4, handle: sync(handleDescribeConfigs)},
		33:             {min: 0, max: 2, handle: sync(handleAlterConfigs)},
		44:             {min: 0, max: 1, handle: sync(handleIncrementalAlterConfigs)},
		42:             {min: 0, max: 2, handle: sync(handleDeleteGroups)},
		47:             {min: 0, max: 0, handle: sync(handleOffsetDelete)},
		37:             {min: 0, max: 3, handle: sync(handleCreatePartitions)},
		24:             {min: 0, max: 3, handle: sync(handleAddPartitionsToTxn)},
		25:             {min: 0, max: 3, handle: sync(handleAddOffsetsToTxn)},
		28:             {min: 0, max: 3, handle: sync(handleTxnOffsetCommit)},
		26:             {min: 0, max: 4, handle: sync(handleEndTxn)},
	}
}

func apiVersionsList() []kmsg.ApiVersionsResponseApiKey {
	keys := make([]kmsg.ApiVersionsResponseApiKey, 0, len(apis))
	for _, k := range slices.Sorted(maps.Keys(apis)) {
		a := apis[k]
		v := kmsg.NewApiVersionsResponseApiKey()
		v.ApiKey, v.MinVersion, v.MaxVersion = k, a.min, a.max
		keys = append(keys, v)
	}
	return keys
}

func handleAPIVersions(r *request) kmsg.Response {
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.ApiKeys = apiVersionsList()
	return resp
}

// unsupportedAPIVersions answers an ApiVersions request of a version not
// served, in v0 form, as Kafka does.
func unsupportedAPIVersions() kmsg.Response {
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.ErrorCode = kerr.UnsupportedVersion.Code
	resp.ApiKeys = apiVersionsList()
	return resp
}
